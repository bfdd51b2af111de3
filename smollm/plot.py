"""The run's loss curve: train and validation loss against tokens seen, sample points marked."""

from __future__ import annotations

from smollm.eval.results import is_eval_record
from smollm.files import atomic_path
from smollm.metrics import read_metrics
from smollm.runs import METRICS, SAMPLES_MD, Run
from smollm.samples import read_samples


def plot_run(run_dir: str, out: str | None = None) -> str:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    metrics = read_metrics(run_dir)
    if not metrics:
        raise FileNotFoundError(f"{run_dir}: no {METRICS} to plot (is it a run directory?)")
    for n, m in enumerate(metrics, 1):
        if not isinstance(m, dict) or not isinstance(m.get("tokens"), (int, float)):
            raise ValueError(f"{Run(run_dir).file(METRICS)}: record {n} has no number of tokens ({str(m)[:60]}); "
                             f"fix or remove that line")
    train = [m for m in metrics if "loss" in m]
    val = [m for m in metrics if "val_loss" in m]
    samples = read_samples(run_dir)
    evals = [m for m in metrics if is_eval_record(m.get("eval"))]
    if evals:  # a second panel: the benchmarks at each evaluation, the same tokens axis
        fig, (ax, ax2) = plt.subplots(2, 1, figsize=(8, 7.5), dpi=120, sharex=True, height_ratios=[3, 2])
    else:
        fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    if train:
        ax.plot([m["tokens"] for m in train], [m["loss"] for m in train], lw=1, alpha=0.8, label="train loss")
    if val:
        ax.plot([m["tokens"] for m in val], [m["val_loss"] for m in val], "o-", ms=4, label="validation loss")
    for i, s in enumerate(samples):
        ax.axvline(s["tokens"], color="gray", ls=":", lw=0.8, label=f"samples ({SAMPLES_MD})" if i == 0 else None)
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(Run(run_dir).title)
    ax.grid(alpha=0.3)
    ax.legend()
    if evals:
        _eval_panel(ax2, evals)
    fig.tight_layout()
    out = out or Run(run_dir).loss_png
    try:
        with atomic_path(out, suffix=".png") as tmp:
            fig.savefig(tmp)
    finally:
        plt.close(fig)
    return out


def _eval_panel(ax, evals: list[dict]) -> None:
    """Each task's headline score (thin) and their average (bold), in percent, against tokens."""
    x = [m["tokens"] for m in evals]
    names = list(dict.fromkeys(k for m in evals for k in m["eval"].get("tasks", {})))
    for name in names:
        pts = [(m["tokens"], 100 * m["eval"]["tasks"][name]["score"]) for m in evals if name in m["eval"]["tasks"]]
        ax.plot(*zip(*pts), lw=0.8, alpha=0.6, label=name)
    ax.plot(x, [100 * m["eval"]["average"]["score"] for m in evals], "o-", lw=2, ms=4, color="black",
            label="average")
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("benchmark score (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
