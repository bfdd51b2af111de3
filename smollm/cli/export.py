"""`train.py export RUN OUT`: a run as a Hugging Face model directory with its model card
(smollm.export), written locally or to a store URL (smollm.remote)."""

from __future__ import annotations

import os
import sys
import tempfile

from smollm.cli import Parser
from smollm.errors import error_line


def export_parser() -> Parser:
    p = Parser(prog="train.py export", description="A run as a Hugging Face model directory with a model card "
               "written from the run (smollm/export.py).")
    p.add_argument("run", help="run directory")
    p.add_argument("out", help="output directory, or a store URL (s3://bucket/prefix: written there, with the run's "
                               "log.remote_options)")
    p.add_argument("--checkpoint", default=None, help="a checkpoint of the run (default: its latest)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    return p


def run(args) -> int:
    """train.py export with its parsed arguments."""
    from smollm.export import export_run
    from smollm.remote import connect, is_url, upload_dir
    from smollm.remote.owner import check_not_own_copy

    try:
        if is_url(args.out):
            saved = _saved_log(args.run)
            options = dict(saved.get("remote_options") or {})
            check_not_own_copy(connect(args.out, options, where="export"), args.run, saved.get("remote"))
            with tempfile.TemporaryDirectory() as tmp:
                local = export_run(args.run, os.path.join(tmp, "model"), args.checkpoint)
                upload_dir(local, args.out, options, overwrite=args.overwrite)
            out = args.out
        else:
            out = export_run(args.run, args.out, args.checkpoint, args.overwrite)
    except (ValueError, OSError) as e:  # a missing run or checkpoint, an unsafe or existing OUT, a bad store
        print(f"train.py export: error: {error_line(e)}", file=sys.stderr)
        return 2
    print(f"exported {out} (model.safetensors, config.json, tokenizer, README.md model card)")
    return 0


def _saved_log(run_dir: str) -> dict:
    """The log section of a run's config.yaml (log.remote, and log.remote_options: an S3-compatible
    store's endpoint), else an empty one."""
    import yaml

    from smollm.runs import Run

    try:
        with open(Run(run_dir).config) as f:
            log = (yaml.safe_load(f) or {}).get("log", {})
        return dict(log) if isinstance(log, dict) else {}
    except (OSError, yaml.YAMLError, AttributeError):
        return {}
