"""Time to a given loss, recipe against recipe, side by side in one run: each recipe trains the same
preset (configs/tiny.yaml: the main job) from the same seed, for the same steps and tokens, and they
take turns on the machine, `--every` steps each, so that a slower minute of the machine falls on all of
them alike. After each turn the recipe's validation loss is measured by the same function on the same
windows (smollm.training.evaluation.validation_loss, stream windows, causal attention: what the run
itself reports), outside the timed part.

For each recipe: the tokens and the training seconds it takes to reach the first recipe's final
validation loss (linear between the two evaluations around it), and its validation loss at the
same tokens as the others. Writes bench/results/time_to_loss_<device>.{jsonl,md,png}.

    python -m bench.time_to_loss                       # the four recipes below, on the tiny main job
    python -m bench.time_to_loss --recipe "fast=optim.kind=muon optim.muon_lr=0.04" --steps 150
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

import torch

from bench.results import RESULTS_DIR, Row, cli, headlines_md, provenance_md, publish, stamp

# name -> overrides over the config; the first is the baseline the others are measured against.
BASELINE = ["optim.kind=adamw", "optim.lr=3e-3"]  # the tiny job's recipe before Muon (docs/tiny_run until then)
MUON = ["optim.kind=muon", "optim.muon_lr=0.04", "optim.muon_momentum=0.95", "optim.lr=2e-2"]  # configs/tiny.yaml's
RECIPES = {
    "adamw, stream windows": [*BASELINE, "data.windows=stream"],
    "muon, stream windows": [*MUON, "data.windows=stream"],
    "adamw, aligned windows": [*BASELINE, "data.windows=aligned"],
    "muon, aligned windows": [*MUON, "data.windows=aligned"],
}


def crossing(curve: list[dict], target: float, key: str) -> float | None:
    """The value of `key` (tokens or seconds) where the validation loss first reaches target, linear
    between the evaluations around it; None when it never does."""
    for a, b in zip(curve, curve[1:]):
        if b["val_loss"] <= target:
            if a["val_loss"] <= target:
                return a[key]
            f = (a["val_loss"] - target) / (a["val_loss"] - b["val_loss"])
            return a[key] + f * (b[key] - a[key])
    return None


def run(config: str, recipes: dict[str, list[str]], every: int, overrides: list[str], out_dir: str) -> dict:
    """{recipe: [{step, tokens, seconds, val_loss}, ...]} of each recipe, trained in turns."""
    from smollm.train_config import load_config
    from smollm.training.build import setup
    from smollm.training.evaluation import validation_loss

    trainers, curves, clocks = {}, {}, {}
    for i, (name, extra) in enumerate(recipes.items()):
        cfg = load_config(config, [*overrides, *extra, f"log.out_dir={out_dir}/{i}", "eval.tasks=[]",
                                   "log.tensorboard=false"])
        trainers[name] = setup(cfg, None)
        curves[name], clocks[name] = [], 0.0
    try:
        for name, t in trainers.items():
            v, _ = validation_loss(t.model, t.val_windows, t.cfg, t.device)
            curves[name].append({"step": 0, "tokens": 0, "seconds": 0.0, "val_loss": v})
        max_steps = next(iter(trainers.values())).cfg.train.max_steps
        for start in range(0, max_steps, every):
            for name, t in trainers.items():
                t.model.train()
                t0 = time.perf_counter()
                for _ in range(min(every, max_steps - start)):
                    t.train_step()
                t.guard.check()  # waits for the device: the turn's time is all in
                clocks[name] += time.perf_counter() - t0
                v, _ = validation_loss(t.model, t.val_windows, t.cfg, t.device)
                curves[name].append({"step": t.step, "tokens": t.tokens, "seconds": clocks[name], "val_loss": v})
            line = " | ".join(f"{n}: {c[-1]['val_loss']:.4f}" for n, c in curves.items())
            print(f"step {start + every}/{max_steps}: val loss {line}", flush=True)
    finally:
        for t in reversed(list(trainers.values())):
            t.close()
    return curves


def parse_recipe(text: str) -> tuple[str, list[str]]:
    name, _, rest = text.partition("=")
    if not rest:
        raise SystemExit(f"--recipe {text!r}: expected NAME=key=value key=value ...")
    return name.strip(), rest.split()


def main(argv=None):
    p = cli(__doc__)
    p.add_argument("--config", default="configs/tiny.yaml")
    p.add_argument("--recipe", action="append", default=None, metavar="NAME=OVERRIDES",
                   help="a recipe (repeatable; the first is the baseline); default: the four of RECIPES")
    p.add_argument("--every", type=int, default=10, help="steps per turn, and between validation losses")
    p.add_argument("--steps", type=int, default=None, help="train.max_steps of every recipe (default: the config's)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="an override for every recipe")
    p.add_argument("--out", default=RESULTS_DIR)
    args = p.parse_args(argv)
    recipes = dict(parse_recipe(r) for r in args.recipe) if args.recipe else RECIPES
    overrides = list(args.set) + ([f"train.max_steps={args.steps}"] if args.steps else [])
    with tempfile.TemporaryDirectory() as tmp:
        curves = run(args.config, recipes, args.every, overrides, tmp)

    st = stamp("time_to_loss", torch.device("cpu") if not torch.cuda.is_available() else torch.device("cuda"))
    base_name = next(iter(curves))
    base = curves[base_name]
    target = base[-1]["val_loss"]
    params = {"config": args.config, "every": args.every, "overrides": overrides, "baseline": base_name,
              "target_val_loss": target, "threads": torch.get_num_threads()}
    rows, lines = [], []
    for name, curve in curves.items():
        tokens, seconds = crossing(curve, target, "tokens"), crossing(curve, target, "seconds")
        m = {"tokens_to_target": tokens, "seconds_to_target": seconds, "final_val_loss": curve[-1]["val_loss"],
             "tokens": curve[-1]["tokens"], "seconds": curve[-1]["seconds"],
             "token_fraction": tokens / base[-1]["tokens"] if tokens is not None else None,
             "time_fraction": seconds / base[-1]["seconds"] if seconds is not None else None, "curve": curve}
        rows.append(st.row({**params, "recipe": name, "overrides_of_recipe": recipes[name]}, m))
        if name != base_name:
            reach = (f"reaches the baseline's final val loss {target:.4f} in {m['token_fraction']:.0%} of its tokens "
                     f"and {m['time_fraction']:.0%} of its training time" if tokens is not None else
                     f"does not reach the baseline's final val loss {target:.4f} within the same tokens")
            lines.append(f"{name}: {reach}; {m['final_val_loss']:.4f} at the same tokens (baseline: {base_name})")
    rows.append(st.summary(lines, {}, **params))
    os.makedirs(args.out, exist_ok=True)
    png = st.path(args.out, "png")
    plot(curves, target, png)
    return publish(args.out, rows, to_markdown(rows, png))


def plot(curves: dict, target: float, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from smollm.files import atomic_path

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, curve in curves.items():
        for ax, key, scale in ((axes[0], "tokens", 1e6), (axes[1], "seconds", 1.0)):
            ax.plot([c[key] / scale for c in curve], [c["val_loss"] for c in curve], label=name)
    for ax, label in ((axes[0], "tokens (M)"), (axes[1], "training seconds")):
        ax.axhline(target, color="gray", ls=":", lw=1)
        ax.set_xlabel(label)
        ax.set_ylabel("validation loss")
        ax.set_ylim(top=min(8.0, max(c[1]["val_loss"] for c in curves.values()) + 0.5))
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle("Validation loss against tokens and against time (dotted: the baseline's final loss)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def to_markdown(rows: list[Row], png: str) -> str:
    summary, results = rows[-1], rows[:-1]
    p = summary.parameters
    lines = [f"# Time to loss ({summary.device}, {p['threads']} threads)", "",
             provenance_md(summary, "python -m bench.time_to_loss"), "",
             f"Each recipe trains {p['config']} ({' '.join(p['overrides']) or 'as it is'}) from the same seed for "
             f"the same tokens, in turns of {p['every']} steps; validation loss after each turn, the same windows "
             f"and function for all. Target: {p['baseline']}'s final validation loss, {p['target_val_loss']:.4f}.", "",
             *headlines_md(rows), "| recipe | tokens to target | share | seconds to target | share | "
             "final val loss | training seconds |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        m = r.metrics
        reach = m["tokens_to_target"] is not None
        lines.append(f"| {r.parameters['recipe']} | {m['tokens_to_target'] or 0:,.0f} | "
                     f"{m['token_fraction'] or 0:.0%} | {m['seconds_to_target'] or 0:,.0f} | "
                     f"{m['time_fraction'] or 0:.0%} | {m['final_val_loss']:.4f} | {m['seconds']:,.0f} |"
                     if reach else f"| {r.parameters['recipe']} | never | | never | | {m['final_val_loss']:.4f} | "
                     f"{m['seconds']:,.0f} |")
    lines += ["", f"![validation loss against tokens and seconds]({png.rsplit('/', 1)[-1]})"]
    return "\n".join(lines + [""])


if __name__ == "__main__":
    sys.exit(main())
