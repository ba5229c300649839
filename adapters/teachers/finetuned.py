"""A teacher fine-tuned on labels by ``crysdistill finetune``, as a teacher again.

``--teacher DIR/teacher.pt`` (or ``finetuned:DIR/teacher.pt``) loads the teacher plugin the file
was fine-tuned from (``chgnet``, ``sevennet``, …) with its checkpoint, puts the fine-tuned weights
in it and freezes it: embeddings, injection, heads and labelling a corpus then use the fine-tuned
layers. What it was trained on is the base teacher's data *plus* the labels it was fine-tuned on,
and those labels count as leaked targets.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from pymatgen.core import Structure

from crysdistill.errors import CheckpointError
from crysdistill.teachers.base import TeacherAdapter, TeacherOutput, TrainingData
from crysdistill.train.finetune import FINETUNED_KIND as KIND


def _kind(path: str) -> str | None:
    from crysdistill.utils import load_checkpoint

    try:
        return load_checkpoint(path).get("kind")
    except CheckpointError:
        return None


class FineTunedTeacher(TeacherAdapter):
    """The fine-tuned weights of another teacher plugin, frozen."""

    name = "finetuned"
    package = "crysdistill"
    default_variant = ""
    batch_size = 16

    @classmethod
    def variants(cls) -> list[str]:
        return []

    @classmethod
    def claims(cls, spec: str) -> bool:
        return Path(spec).is_file() and _kind(spec) == KIND

    def load(self) -> None:
        from crysdistill.teachers.registry import get_teacher_class
        from crysdistill.utils import load_checkpoint

        if not self.variant:
            raise CheckpointError("the finetuned teacher needs a file: --teacher DIR/teacher.pt of crysdistill finetune")
        ckpt = load_checkpoint(self.variant)
        if ckpt.get("kind") != KIND:
            raise CheckpointError(f"{self.variant}: is a {ckpt.get('kind')!r} checkpoint, not a fine-tuned teacher "
                                  "(crysdistill finetune --out DIR writes DIR/teacher.pt)")
        self.ckpt = ckpt
        self.base = get_teacher_class(ckpt["plugin"])(ckpt["base_variant"], device=self.device)
        if self.base.fingerprint != ckpt["base_fingerprint"]:
            raise CheckpointError(f"{self.variant}: was fine-tuned from {ckpt['plugin']} {ckpt['base_fingerprint']}, "
                                  f"but {self.base.spec} is now {self.base.fingerprint} ({self.base.package} "
                                  f"{self.base.package_version()}); restore that version")
        self.base.module.load_state_dict(ckpt["state_dict"])
        self.batch_size = self.base.batch_size

    @property
    def module(self) -> torch.nn.Module:
        return self.base.module

    @property
    def fingerprint(self) -> str:
        # the base teacher and the fine-tuned weights, not where the file lies
        if self._fingerprint is None:
            import hashlib
            import json

            from crysdistill.utils import state_fingerprint

            self._fingerprint = hashlib.sha1(json.dumps({
                "plugin": self.name, "base": self.ckpt["base_fingerprint"], "twin_seed": self.twin_seed,
                "weights": state_fingerprint(self.module.state_dict())}, sort_keys=True).encode()).hexdigest()[:16]
        return self._fingerprint

    @property
    def layer_names(self) -> list[str]:
        return self.base.layer_names

    @property
    def layer_widths(self) -> list[int]:
        return self.base.layer_widths

    @property
    def settings(self) -> dict:
        return {**self.base.settings, "fine_tuned_from": self.base.spec}

    @property
    def training(self) -> TrainingData:
        b, f = self.base.training, self.ckpt["fine_tuned_on"]
        targets = tuple(f["targets"])
        return TrainingData(dataset=f"{b.dataset}; fine-tuned on {', '.join(targets)} of {f['n_train']} structures "
                                    f"of {f['data']}",
                            labels=tuple(b.labels) + tuple(f"fine-tuned: {t}" for t in targets),
                            leaked_targets=tuple(b.leaked_targets) + targets,
                            structures=f"{b.structures}; {f['data']}")

    def seen_ids(self) -> set[str]:
        return set(self.ckpt["fine_tuned_on"].get("seen_ids", []))

    def check(self, structure: Structure) -> str | None:
        return self.base.check(structure)

    def embed(self, structures: Sequence[Structure]) -> TeacherOutput:
        return self.base.embed(structures)

    def inputs(self, structures: Sequence[Structure]) -> list:
        return self.base.inputs(structures)

    def forward(self, inputs: list) -> TeacherOutput:
        return self.base.forward(inputs)

    def blocks(self) -> list[torch.nn.Module]:
        return self.base.blocks()
