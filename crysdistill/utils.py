"""Small shared utilities: atomic checkpoint writes, seeding, version stamps."""

from __future__ import annotations

import hashlib
import os
import random
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename: never a half-written file."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(text: str, path: str | os.PathLike) -> None:
    """Write a text file atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def versions() -> dict[str, str]:
    """Versions of crysdistill and the libraries that shape its results."""
    from importlib import metadata

    out = {}
    for dist in ("crysdistill", "torch", "torch-geometric", "pymatgen", "jarvis-tools", "alignn", "numpy", "spglib"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def state_fingerprint(state_dict: dict) -> str:
    """Short hash of a module's weights and buffers (identifies a teacher)."""
    import torch

    h = hashlib.sha256()
    for k in sorted(state_dict):
        h.update(k.encode())
        t = state_dict[k]
        if isinstance(t, torch.Tensor):
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def load_checkpoint(path: str | os.PathLike) -> dict:
    """``torch.load(..., weights_only=True)`` with one-line errors for missing or foreign files."""
    import torch

    from crysdistill.errors import CheckpointError

    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: checkpoint not found")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{p}: not a readable crysdistill checkpoint ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not isinstance(obj, dict) or "kind" not in obj:
        raise CheckpointError(f"{p}: not a crysdistill checkpoint (no 'kind' entry)")
    return obj


def cosine_schedule(optimizer, total_steps: int, floor: float = 0.01):
    """A ``LambdaLR`` that decays every learning rate from its value to ``floor`` × it by a cosine
    over ``total_steps`` optimiser steps, flat after that."""
    import math

    import torch

    total = max(1, total_steps)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))


def restore_run(last_path: str | os.PathLike, config: dict, modules: dict, optimizer, scheduler) -> dict:
    """Load an interrupted run's ``last.pt`` into its modules, optimiser, scheduler and torch RNG.

    Args:
        last_path: the run's ``last.pt``.
        config: the config of the run being resumed (``to_dict`` form, with ``epochs``): it must
            equal the stored one except for ``epochs``, which may grow.
        modules: ``{key in the checkpoint: module}`` to load (e.g. ``{"state_dict": model}``).

    Returns:
        The checkpoint's dict (``epoch``, best-so-far values, ``seconds``, …).

    Raises:
        UserError: the run was started with another config.
    """
    import torch

    from crysdistill.errors import UserError

    state = load_checkpoint(last_path)
    if {**state.get("config", {}), "epochs": config.get("epochs")} != config:
        raise UserError(f"{last_path}: the run was started with another config; resume with the same arguments "
                        "(only --epochs may grow) or start a new --out folder")
    for key, module in modules.items():
        module.load_state_dict(state[key])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    return state


def progress_bar(total: int, desc: str):
    """A tqdm bar on a terminal, otherwise ``None``."""
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="struct", leave=False)


def build_progress(desc: str, every: float = 60.0):
    """A ``progress(done, total)`` callback: a bar on a terminal; off a terminal (a ``nohup`` log),
    one line every ``every`` seconds with the rate and the time left, once a step has taken that long."""
    import logging
    import time

    state = {"bar": None, "t0": time.perf_counter(), "last": time.perf_counter()}

    def cb(done: int, total: int) -> None:
        if state["bar"] is None:
            state["bar"] = progress_bar(total, desc) or False
        if state["bar"]:
            state["bar"].n = done
            state["bar"].refresh()
            if done >= total:
                state["bar"].close()
            return
        now = time.perf_counter()
        if now - state["last"] >= every and 0 < done:
            rate = done / (now - state["t0"])
            logging.getLogger("crysdistill").info("%s: %d/%d (%.1f/s, %.0f min left)", desc, done, total, rate,
                                                  (total - done) / rate / 60)
            state["last"] = now

    return cb


def resolve_device(name: str):
    """``auto`` → CUDA when available, else CPU; ``cuda`` without a GPU is a one-line error."""
    import torch

    from crysdistill.errors import ConfigError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but no CUDA device is available; use device=auto or cpu")
    return torch.device(name)


@dataclass
class Dist:
    """This process's place in a (possibly single-process) data-parallel run."""

    rank: int = 0
    world: int = 1
    device: Any = None

    def __post_init__(self) -> None:
        if self.device is None:
            import torch

            self.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every process (no-op in a single process)."""
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def all_sum(self, values):
        """Element-wise sum of a list of floats (or a float tensor) over the processes, on the CPU.

        The reduction runs on this process's device: nccl reduces GPU tensors only."""
        import torch

        t = torch.as_tensor(values, dtype=torch.float64).clone()
        if self.world > 1:
            import torch.distributed as dist

            t = t.to(self.device)
            dist.all_reduce(t)
        return t.cpu()


def setup_distributed(device: str = "auto", timeout_s: float | None = None) -> Dist:
    """Join the process group when started by ``torchrun`` (``WORLD_SIZE > 1``) and pick the device:
    one GPU per process (nccl) where CUDA is available and ``device`` allows it, else CPU (gloo).

    Args:
        device: ``auto``, ``cpu`` or ``cuda`` (the run's setting).
        timeout_s: how long a collective (a barrier) may wait, e.g. while rank 0 alone fills a cache
            (default: torch's).
    """
    import torch
    import torch.distributed as dist

    want = resolve_device(device)  # 'cuda' without a GPU is a one-line error here too
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(0, 1, want)
    cuda = want.type == "cuda"
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    if cuda:
        torch.cuda.set_device(local % torch.cuda.device_count())
    if not dist.is_initialized():
        kwargs = {}
        if timeout_s is not None:
            import datetime

            kwargs["timeout"] = datetime.timedelta(seconds=timeout_s)
        dist.init_process_group("nccl" if cuda else "gloo", **kwargs)
    return Dist(rank, world, torch.device(f"cuda:{local % torch.cuda.device_count()}" if cuda else "cpu"))
