"""The CrysGNN teacher this project pretrains (``crysdistill pretrain``), as a teacher plugin.

Variants are the checkpoints shipped inside crysdistill (``default``, ``crysgnn``, ``mp-eform``)
or the path of any ``teacher.pt``; bare shipped names and paths are claimed by this plugin, so
``--teacher default`` and ``--teacher runs/t/teacher.pt`` work as they always did. Layers are the
encoder's input embedding (layer 0) and the output of each convolution, ``width`` wide each.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from pymatgen.core import Structure

from crysdistill.data.batch import collate
from crysdistill.errors import RecordError
from crysdistill.teachers.base import TeacherAdapter, TeacherOutput, TrainingData


class CrysGNNTeacher(TeacherAdapter):
    """A pretrained CrysGNN encoder (Das et al., AAAI 2023) loaded from a crysdistill teacher checkpoint."""

    name = "crysgnn"
    default_variant = "crysgnn"
    package = "crysdistill"
    batch_size = 256

    @classmethod
    def variants(cls) -> list[str]:
        from crysdistill.teacher.checkpoint import bundled_teachers

        return list(bundled_teachers())

    @classmethod
    def claims(cls, spec: str) -> bool:
        if spec in cls.variants():
            return True
        if Path(spec).is_file():  # any checkpoint but another plugin's fine-tuned teacher
            from crysdistill.train.finetune import FINETUNED_KIND
            from crysdistill.utils import load_checkpoint

            try:
                return load_checkpoint(spec).get("kind") != FINETUNED_KIND
            except Exception:
                return True  # the CrysGNN loader names what is wrong with it
        return spec.endswith(".pt")

    def load(self) -> None:
        from crysdistill.teacher.checkpoint import load_teacher

        self.teacher = load_teacher(self.variant)
        self._featurizer = self.teacher.featurizer()

    @property
    def module(self) -> torch.nn.Module:
        return self.teacher.encoder

    @property
    def fingerprint(self) -> str:
        # the checkpoint's own fingerprint, as before teachers were plugins: cached embeddings and
        # students trained with injection keep pointing at the same teacher (a random twin hashes its weights)
        return self.teacher.fingerprint if self.twin_seed is None else super().fingerprint

    @property
    def layer_names(self) -> list[str]:
        return ["embedding"] + [f"conv{k}" for k in range(1, self.teacher.encoder.config.layers + 1)]

    @property
    def layer_widths(self) -> list[int]:
        return [self.teacher.encoder.width] * (self.teacher.encoder.config.layers + 1)

    @property
    def settings(self) -> dict:
        return {"path": self.teacher.path, "graph": self.teacher.graph_settings.to_dict()}

    @property
    def training(self) -> TrainingData:
        meta = self.teacher.meta
        tasks = meta.get("tasks") or {}
        labels = [f"self-supervised pretext task {t}" for t in tasks if t != "property"]
        leaked: list[str] = []
        if "property" in tasks:
            label = (tasks["property"].get("options") or {}).get("label", "")
            labels.append(f"supervised {label}")
            leaked.append(label)
        data = meta.get("data") or "unknown corpus"
        return TrainingData(dataset=f"{meta.get('n_train', '?')} structures of {data}", labels=tuple(labels),
                            leaked_targets=tuple(leaked), structures=str(data))

    def check(self, structure: Structure) -> str | None:
        try:
            self._featurizer.featurize(structure)
        except RecordError as exc:
            return exc.reason
        return None

    def embed(self, structures: Sequence[Structure]) -> TeacherOutput:
        graphs = [self._featurizer.featurize(s) for s in structures]
        batch = collate(graphs, self.teacher.graph_settings).to(self.device)
        with torch.no_grad():
            out = self.teacher.encoder(batch)
        return TeacherOutput([x.float() for x in out.layers], batch.ptr.cpu())
