"""The command line of `python -m smollm.prepare` (smollm/prepare/__main__.py). It parses before it
imports the library's heavy part (numpy, torch through smollm.data), so --help and a mistyped flag
answer at once."""

from __future__ import annotations

import argparse
import sys

from smollm.errors import error_line
from smollm.prepare.counts import parse_count
from smollm.prepare.sources import HF_CONFIG, HF_DATASET


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage block: main() prints it
        raise _UsageError(f"{message} (see --help)")


def _one_line(e: BaseException) -> str:
    known = (ValueError, KeyError, OSError, TypeError, RuntimeError, _UsageError)
    return error_line(e) if isinstance(e, known) else f"{type(e).__name__}: {error_line(e)}"


def main(argv=None) -> int:
    """The command line. Every error is one line on stderr and exit code 2 (no traceback); an
    interrupted run says how to resume and exits with 130."""
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print("prepare: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as e:
        print(f"prepare: error: {_one_line(e)}", file=sys.stderr)
        return 2


def _main(argv) -> int:
    p = _Parser(prog="python -m smollm.prepare",
                description="Tokenize a corpus into uint16 token shards (train + val).")
    p.add_argument("--source", nargs="+", default=["stdlib"],
                   help="'stdlib' (offline default: the Python standard library's sources), 'hf' "
                        f"(= hf:{HF_DATASET}:{HF_CONFIG}, streamed), hf:NAME[:CONFIG], or local files/globs "
                        "(txt, jsonl, parquet)")
    p.add_argument("--out", default=None, help="dataset directory (created; a partial one is resumed)")
    p.add_argument("--verify", default=None, metavar="DIR",
                   help="check every byte of a prepared dataset's shards against meta.json's checksums (training "
                        "checks a sample of each at every start), and exit")
    p.add_argument("--tokenizer", default=None, help="tokenizer path or hub id (default: resolved as in the README)")
    p.add_argument("--column", default="text", help="text column of jsonl/parquet/hf sources")
    p.add_argument("--tokens", default=None, help="token budget, e.g. 1.2B (default: the whole source)")
    p.add_argument("--shard-tokens", default="50M", help="tokens per train shard (default 50M)")
    p.add_argument("--val-fraction", type=float, default=0.01, help="fraction of documents held out (default 0.01)")
    p.add_argument("--workers", type=int, default=None,
                   help="tokenizer processes (default: cores/2)")
    p.add_argument("--threads", type=int, default=None, help="encoding threads per process (default: cores/workers)")
    args = p.parse_args(argv)
    if args.verify is not None:
        return _verify(args.verify)
    if args.out is None:
        p.error("the following arguments are required: --out")
    if not 0 <= args.val_fraction < 1:
        p.error(f"--val-fraction must be in [0, 1), got {args.val_fraction}")
    for flag, value in (("--workers", args.workers), ("--threads", args.threads)):
        if value is not None and value < 1:
            p.error(f"{flag} must be at least 1, got {value}")
    counts = {}
    for flag, value in (("--tokens", args.tokens), ("--shard-tokens", args.shard_tokens)):
        if value is not None:
            try:
                counts[flag] = parse_count(value)
            except ValueError as e:
                p.error(f"{flag}: {e}")
            if counts[flag] < 1:
                p.error(f"{flag} must be at least 1, got {value!r}")
    from smollm.prepare.run import prepare  # after parsing: it imports numpy and torch (smollm.data)

    meta = prepare(args.source, args.out, tokenizer_name=args.tokenizer, column=args.column,
                   max_tokens=counts.get("--tokens"), shard_tokens=counts["--shard-tokens"],
                   val_fraction=args.val_fraction, workers=args.workers, threads=args.threads)
    print(f"{args.out}: {meta['tokens']['train']:,} train tokens ({meta['documents']['train']:,} documents), "
          f"{meta['tokens']['val']:,} val tokens ({meta['documents']['val']:,} documents), "
          f"{len(meta['shards'])} shards")
    # The split is by each document's hash: a small corpus may draw no validation document at all.
    if meta["val_fraction"] > 0 and not meta["documents"]["val"]:
        print(f"note: no validation documents at --val-fraction {meta['val_fraction']} (each document is one with "
              f"that chance); train.py will run without a validation loss: raise --val-fraction for a corpus "
              f"of {meta['documents']['train']:,} documents")
    # The text policy, said where the counts are (nothing is dropped or replaced without a word).
    print("text: read as UTF-8; a local file with invalid UTF-8 stops the run, naming file and line"
          + ("; the standard library's few deliberately non-UTF-8 test files are left out" if "stdlib" in args.source
             else ""))
    return 0


def _verify(directory: str) -> int:
    """--verify: every shard's sha256 against meta.json; the first that differs is the error."""
    import os

    from smollm.data import read_meta, verify_shard

    shards = read_meta(directory).get("shards", [])
    unchecked = [s["file"] for s in shards if "sha256" not in s]
    for entry in shards:
        verify_shard(os.path.join(directory, entry["file"]), entry, full=True)
    print(f"{directory}: {len(shards) - len(unchecked)} shards match their checksums"
          + (f"; {len(unchecked)} have none (prepared before checksums were recorded)" if unchecked else ""))
    return 0
