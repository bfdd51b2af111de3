"""The run's loss curve: train and validation loss against tokens seen, sample points marked."""

from __future__ import annotations

import os
import tempfile

from smollm.metrics import read_metrics
from smollm.samples import read_samples


def plot_run(run_dir: str, out: str | None = None) -> str:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    metrics = read_metrics(run_dir)
    if not metrics:
        raise FileNotFoundError(f"{run_dir}: no metrics.jsonl to plot (is it a run directory?)")
    train = [m for m in metrics if "loss" in m]
    val = [m for m in metrics if "val_loss" in m]
    samples = read_samples(run_dir)
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    if train:
        ax.plot([m["tokens"] for m in train], [m["loss"] for m in train], lw=1, alpha=0.8, label="train loss")
    if val:
        ax.plot([m["tokens"] for m in val], [m["val_loss"] for m in val], "o-", ms=4, label="validation loss")
    for i, s in enumerate(samples):
        ax.axvline(s["tokens"], color="gray", ls=":", lw=0.8, label="samples (samples.md)" if i == 0 else None)
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(os.path.basename(os.path.abspath(run_dir)))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = out or os.path.join(run_dir, "loss.png")
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".png", dir=os.path.dirname(os.path.abspath(out)))
    os.close(fd)
    try:
        fig.savefig(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out
