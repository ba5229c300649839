"""Pretext learning curves of a pretraining run: ``python -m crysdistill.teacher.plot RUN_DIR OUT.png``."""

from __future__ import annotations

import csv
import math
import os
import sys
from pathlib import Path


def read_metrics(path: str | os.PathLike) -> list[dict[str, float]]:
    """Rows of a run's ``metrics.csv`` as floats (empty cells become NaN)."""
    with open(path, newline="") as fh:
        return [{k: float(v) if v not in ("", None) else math.nan for k, v in row.items()} for row in csv.DictReader(fh)]


def plot_curves(metrics_csv: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Loss and accuracy (MAE for regression tasks) of every pretext task per epoch, training and validation, in one PNG.

    Args:
        metrics_csv: ``metrics.csv`` of a run folder.
        out: PNG to write.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rows = read_metrics(metrics_csv)
    tasks = sorted({k[len("val_"):-len("_acc")] for k in rows[0] if k.startswith("val_") and k.endswith("_acc")})
    epochs = [r["epoch"] for r in rows]
    fig, axes = plt.subplots(2, len(tasks), figsize=(3.2 * len(tasks), 5.6), squeeze=False)
    for c, task in enumerate(tasks):
        for r_, what in enumerate(("loss", "mae" if f"val_{task}_mae" in rows[0] else "acc")):
            ax = axes[r_][c]
            for part, style in (("train", "-"), ("val", "--")):
                ax.plot(epochs, [row[f"{part}_{task}_{what}"] for row in rows], style, marker="o", ms=3,
                        label=part)
            if what == "acc" and f"val_{task}_top5" in rows[0]:
                ax.plot(epochs, [row[f"val_{task}_top5"] for row in rows], ":", marker="o", ms=3, label="val top-5")
            title = {"loss": "loss", "acc": "accuracy", "mae": "MAE"}[what]
            ax.set_title(f"{task.replace('_', ' ')}: {title}", fontsize=9)
            ax.set_xlabel("epoch", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if c == 0 or (what == "acc" and f"val_{task}_top5" in rows[0]):
                ax.legend(fontsize=7)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m crysdistill.teacher.plot RUN_DIR_or_metrics.csv OUT.png")
    src = Path(sys.argv[1])
    print(plot_curves(src / "metrics.csv" if src.is_dir() else src, sys.argv[2]))
