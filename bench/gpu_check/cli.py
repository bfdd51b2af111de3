"""The GPU check's command line: its flags and their defaults by device, and main(), which runs the sections
in the order asked for under one budget and returns the exit status (0, 1 a row failed, 2 no GPU)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import torch

import bench.gpu_check as package
from bench.gpu_check.ceilings import section_a
from bench.gpu_check.ops import section_d
from bench.gpu_check.parity import PARITY_TESTS, section_e
from bench.gpu_check.plan import DEFAULT_ORDER, EXTRA_OPS, OPS, SECTIONS, defaults
from bench.gpu_check.profiling import section_c
from bench.gpu_check.runner import Budget, Ctx, Recorder, error_fields, start_watchdog
from bench.gpu_check.training import section_b
from bench.results import RESULTS_DIR, cli, now_utc, stamp
from smollm.config import get_preset


def parse_args(argv, gpu: bool, prog: str | None = None) -> argparse.Namespace:
    d = defaults(gpu)
    p = cli(package.__doc__)  # --help: the whole package docstring
    if prog:
        p.prog = prog
    p.add_argument("--out", default=RESULTS_DIR)
    p.add_argument("--budget-s", type=float, default=450.0,
                   help="start a row only if its estimate fits before this many seconds from the start")
    p.add_argument("--hard-stop-s", type=float, default=None,
                   help="stop a row still running then, and exit (default: budget + 20 s)")
    p.add_argument("--estimate-scale", type=float, default=1.0,
                   help="multiply every row's time estimate (ESTIMATE_S): < 1 for a faster machine")
    p.add_argument("--sections", nargs="+", default=DEFAULT_ORDER, choices=list(SECTIONS),
                   help=f"which sections, run in the order given (default {' '.join(DEFAULT_ORDER)})")
    p.add_argument("--require-gpu", action="store_true", help="exit 2 at once when torch sees no GPU")
    p.add_argument("--row-cap-s", type=float, default=240.0,
                   help="(b): stop a training row (its compile included) after this long and go on to the next")
    p.add_argument("--gemm-n", type=int, default=d["gemm_n"])
    p.add_argument("--copy-mib", type=int, default=d["copy_mib"])
    p.add_argument("--preset", default=d["preset"])
    p.add_argument("--layers", type=int, default=None, help="override the preset's number of layers")
    p.add_argument("--batch", type=int, default=d["batch"])
    p.add_argument("--seq", type=int, default=d["seq"])
    p.add_argument("--steps", type=int, default=d["steps"], help="timed steps")
    p.add_argument("--warmup", type=int, default=d["warmup"], help="untimed steps first (compile included), >= 1")
    p.add_argument("--op-tokens", type=int, default=d["op_tokens"])
    p.add_argument("--ops", nargs="+", default=None,
                   help=f"(d): default {OPS} + those of {EXTRA_OPS} that kernels has (checked at run time)")
    p.add_argument("--parity", default="auto", choices=["auto", "pytest", "measure"],
                   help="(e): pytest when installed (auto), or bench/parity.py in-process")
    p.add_argument("--parity-tests", nargs="+", default=PARITY_TESTS)
    p.add_argument("--parity-tokens", type=int, default=d["parity_tokens"])
    p.add_argument("--parity-timeout-s", type=float, default=200.0,
                   help="(e): stop the parity tests after this long, so the rows after them keep their time")
    args = p.parse_args(argv)
    args.warmup = max(1, args.warmup)
    return args


def main(argv=None, start: float | None = None, prog: str | None = None) -> int:
    """The check; `start` (monotonic seconds) is when the budget began: __main__ passes START, the package's
    import time; `prog`: the name its usage and errors give (argparse's default, the script's file name, else)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    args = parse_args(argv, device.type == "cuda", prog)
    if args.require_gpu and device.type != "cuda":
        print("bench/gpu_check.py: torch sees no GPU (a CUDA build of torch and a driver are needed); "
              "bench/gpu.sh --cpu-smoke runs the check on the CPU at tiny sizes", file=sys.stderr)
        return 2
    budget = Budget(args.budget_s, time.monotonic() if start is None else start)
    st = stamp("gpu_check", device)
    sections = list(dict.fromkeys(args.sections))  # in the order asked for, each once
    meta = {"started": now_utc(), "sections": sections, "cpu": device.type != "cuda"}
    rec = Recorder(args.out, st, budget, meta)
    rec.estimate_scale = args.estimate_scale
    cfg = get_preset(args.preset)
    ctx = Ctx(args, device, rec, cfg=dataclasses.replace(cfg, num_hidden_layers=args.layers) if args.layers else cfg)
    print(f"bench/gpu_check.py: {st.device}, commit {st.commit}, torch {st.versions['torch']}, "
          f"triton {st.versions['triton']}; "
          f"budget {args.budget_s:.0f} s; sections {' '.join(sections)}; rows -> {rec.jsonl}", flush=True)
    watchdog = start_watchdog(rec, args.budget_s + 20 if args.hard_stop_s is None else args.hard_stop_s)
    try:
        for sec in sections:
            try:
                {"a": section_a, "b": section_b, "c": section_c, "d": section_d, "e": section_e}[sec](ctx)
            except Exception as exc:  # noqa: BLE001 - a bug between rows still leaves a row; the next section runs
                rec.add(sec, f"section {sec}", error_fields(exc), "error")
    finally:
        with rec.lock:
            watchdog.set()
    rec.finish()
    errors = [r for r in rec.rows if r["status"] == "error"]
    print(f"bench/gpu_check.py: {len(rec.rows)} rows, {len(errors)} errors, {budget.used():.0f} s; "
          f"{rec.md_path}", flush=True)
    return 1 if errors else 0
