"""train.py: pretrain SmolLM2 (smollm.training), or its commands `plot` (smollm.cli.plot) and
`export` (smollm.cli.export). The arguments are parsed from light modules only, before the library
is imported, so --help and a mistyped flag answer at once: torch takes seconds to import on a busy
machine."""

from __future__ import annotations

import argparse
import os
import sys

from smollm.cli import Parser, export, plot
from smollm.errors import error_line

DEFAULT_CONFIG = os.path.join("configs", "tiny.yaml")  # train.py's run without --config


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


SUBCOMMANDS = {"plot": plot, "export": export}  # train.py WORD ...: the module of each command


def train_args(argv: list[str]) -> tuple[str, argparse.Namespace]:
    """(command, its arguments) of a train.py command line: "plot" or "export" when it starts with
    that word, else "train". --help and argument errors exit here."""
    if argv and argv[0] in SUBCOMMANDS:
        return argv[0], getattr(SUBCOMMANDS[argv[0]], f"{argv[0]}_parser")().parse_args(argv[1:])
    return "train", train_parser().parse_args(argv)


def default_config() -> str:
    """configs/tiny.yaml of the working directory, else the one in this checkout."""
    if os.path.isfile(DEFAULT_CONFIG):
        return DEFAULT_CONFIG
    return os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), DEFAULT_CONFIG)


def train_command(args) -> int:
    """train.py itself (args: train_parser's)."""
    import torch.distributed as dist
    import yaml

    from smollm.checkpoint import latest_checkpoint
    from smollm.data import ShardError
    from smollm.files import SourceNotFound
    from smollm.remote import is_url
    from smollm.train_config import ConfigError, load_config
    from smollm.training.loop import train
    from smollm.training.resume import fetch_remote_run, resumed_config
    from smollm.training.step import NonFiniteLoss

    def fail(e: BaseException, code: int) -> int:
        print(f"error: {error_line(e)}", file=sys.stderr)
        if dist.is_initialized():  # every process meets the same error (a config, a checkpoint): leave together
            dist.destroy_process_group()
        return code

    cfg = ckpt = None
    try:
        if (args.resume not in (None, "latest") and "=" in args.resume and not os.path.exists(args.resume)
                and not is_url(args.resume)):
            raise ConfigError(f"--resume takes a run directory or checkpoint, not {args.resume!r}; put overrides "
                              f"after it (train.py --resume RUN {args.resume}), or use --resume with no value "
                              f"last (train.py {args.resume} --resume) for log.out_dir's latest checkpoint")
        if args.resume not in (None, "latest") and is_url(args.resume):
            args.resume, args.overrides = fetch_remote_run(args.resume, args.overrides)
        if args.resume not in (None, "latest"):
            cfg, ckpt = resumed_config(args.resume, args.config, args.overrides)
        else:
            cfg = load_config(args.config or default_config(), args.overrides)
        # The checkpoint resolved above (a bad newest one already warned about and passed over).
        summary = train(cfg, resume=ckpt if args.resume not in (None, "latest") else args.resume)
    except NonFiniteLoss as e:
        return fail(e, 1)
    except SourceNotFound as e:  # the one model or tokenizer source a run names: said as its key
        print(f"error: {e.describe('data.tokenizer')}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        last = latest_checkpoint(cfg.log.out_dir) if cfg is not None else None
        print(f"aborted by Ctrl-C: no checkpoint of the step in progress; the latest is {last or 'none'}",
              file=sys.stderr)
        return 130
    except RuntimeError as e:
        if not lost_process(e):
            raise
        last = latest_checkpoint(cfg.log.out_dir) if cfg is not None else None
        print(f"error: a process of this run was lost ({error_line(e)}); the run stopped. Its checkpoints are whole: "
              f"resume from the latest, {last or 'none yet'}, on any number of processes (train.py --resume "
              f"{cfg.log.out_dir if cfg is not None else 'RUN'})", file=sys.stderr)
        return 1
    except (ValueError, KeyError, OSError, ShardError, yaml.YAMLError) as e:
        # ConfigError, FileExistsError (a lock held, a run dir with checkpoints), FileNotFoundError,
        # unreadable or corrupt checkpoint files (load_checkpoint: ValueError naming the file)
        return fail(e, 2)
    if summary["stopped"] is None and summary["val_loss"] is not None:
        print(f"done: step {summary['step']}, {summary['tokens']:,} tokens, val loss {summary['val_loss']:.4f}")
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


def lost_process(e: RuntimeError) -> bool:
    """Whether e is a collective that failed because another process of the run is gone (killed, its
    node lost, its connection cut): torch.distributed's own errors, gloo's dropped connections."""
    import torch.distributed as dist

    text = str(e)
    return dist.is_initialized() and (isinstance(e, dist.DistError) or any(
        s in text for s in ("closed by peer", "reset by peer", "Broken pipe", "Connection refused")))


def run_command(command: str, args) -> int:
    """A train.py command ("train", "plot" or "export", as train_args names it) with its parsed arguments."""
    if command == "train":
        return train_command(args)
    return SUBCOMMANDS[command].run(args)


def main(argv=None) -> int:
    return run_command(*train_args(list(sys.argv[1:] if argv is None else argv)))
