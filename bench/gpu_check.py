"""The GPU check: what a GPU lent for a few minutes should tell us, most valuable first, in one process
under one time budget, each row written the moment it is measured (a killed run keeps every row
before the kill):

  (a) the GPU's measured ceilings: bf16 GEMM TFLOP/s (torch.mm, 8192^3) and device copy GB/s (1 GiB);
  (b) one training step (micro-batch 16 x 1024, bf16 autocast, fused AdamW), compiled: ours on the
      triton path, ours on the torch path, transformers' LlamaForCausalLM; compile + warm-up apart from
      the timed steps, tokens/s, MFU against the nominal bf16 peak and against (a)'s GEMM rate, peak memory;
  (c) torch.profiler on one triton-path step (the model compiled in (b)): the 15 most expensive kernels
      and the time per op family (GEMM, attention, each of our ops, inductor kernels, optimizer, other);
  (d) each op at 16,384 tokens, forward+backward, bf16: eager, compiled reference, ours, Liger when
      installed; ms, GB/s and the share of (a)'s copy bandwidth;
  (e) the kernel parity tests compiled on this device (pytest in a subprocess, timeout = the time left),
      or without pytest bench/parity.py's max errors in-process.

    python -m bench.gpu_check [--out DIR] [--budget-s 450] [--sections a b c d e] [--steps 10]
        [--preset P] [--layers L] [--batch B] [--seq T] [--gemm-n N] [--copy-mib M] [--op-tokens N]
        [--ops OP ...] [--parity auto|pytest|measure] [--hard-stop-s S] [--estimate-scale X] [--require-gpu]
        # writes DIR/gpu_check_<device-slug>.jsonl (one bench.results.Row per line, fsynced; the run's summary
        # row with its headlines last) and DIR/gpu_check_<device-slug>.md (re-rendered atomically after every
        # row); exit 0 when every row ran or was skipped for a stated reason, 1 if any errored

Each row runs only if its estimated time (ESTIMATE_S) fits in what is left of --budget-s (counted from
the start of this process, imports included), else it is written as "skipped: time budget". A row that
raises becomes an error row (exception, first line, last frames) and the check moves on. A row still
running at --hard-stop-s (default budget + 20 s) is written as skipped and the process exits.

Without a GPU everything runs on the CPU at whatever sizes the flags give (the defaults are small): the
triton rows run Triton's interpreter there, correct but with timings that mean nothing. bench/gpu.sh
is the wrapper the device tool runs; tests/test_bench_gpu_check.py runs this module end to end on a CPU.
Needs only torch, triton and numpy (transformers, liger-kernel, pytest are used when installed).
"""

from __future__ import annotations

import time

START = time.monotonic()  # the budget counts from here

import argparse  # noqa: E402
import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import importlib.util  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import traceback  # noqa: E402

import torch  # noqa: E402

from smollm import kernels as K  # noqa: E402
from smollm.kernels import cross_entropy as CE  # noqa: E402
from bench import kernels as BK  # noqa: E402
from bench.measure import (allocated_mib, copy_gb_s, free_memory, gemm_tflop_s, peak_gb_s,  # noqa: E402
                           peak_memory_mib, reset_peak_memory, sync, time_ms)
from bench.results import RESULTS_DIR, ROOT, Stamp, append_row, cli, now_utc, stamp  # noqa: E402
from bench.train_step import batch, build, step_fn  # noqa: E402
from smollm.files import atomic_write_text  # noqa: E402
from smollm.config import get_preset  # noqa: E402
from smollm.metrics import flops_per_token, peak_tflops  # noqa: E402

SECTIONS = {"a": "Measured ceilings", "b": "Training step", "c": "Profile of one triton-path step",
            "d": "Ops, forward+backward", "e": "Kernel parity on this device"}
# The order they run in unless --sections gives another: correctness first (is what a GPU compiles right?),
# then the training rows (the number the project exists for), then the rest. (b)'s MFU against the measured
# GEMM rate is worked out when (a) has run, whichever came first.
DEFAULT_ORDER = ["e", "b", "c", "a", "d"]
# Our triton path first: the most valuable row, and the model (c) profiles without compiling again.
TRAIN_ROWS = [("ours, triton path, compiled", "ours", "triton"), ("ours, torch path, compiled", "ours", "torch"),
              ("transformers, compiled", "hf", None)]
OPS = ["rmsnorm", "rope", "swiglu", "ce"]
EXTRA_OPS = ["add_rms_norm", "swiglu_packed"]  # run when kernels exposes them (hasattr, at run time)
PARITY_TESTS = ["tests/test_rmsnorm.py", "tests/test_rope.py", "tests/test_swiglu.py", "tests/test_cross_entropy.py"]
CPU_TRITON = "CPU: Triton's interpreter; its timings mean nothing"
CPU_SKIP = "CPU: interpreter timings mean nothing"
MiB = 2 ** 20

# Seconds each row is expected to take on an H100/H200, compiles cold: a row starts only if this fits in
# the time left. Training rows are dominated by a cold torch.compile of the whole model, forward and
# backward (the triton path has fewer inductor kernels; transformers' modeling code traces slowest);
# after the first training row the next one is expected to take as long as the previous one did (x1.3
# for transformers), so the estimate follows the machine. (c) reuses (b)'s compiled model (one step
# under the profiler); without it, an eager triton-path model. (d): a compiled reference is a small
# graph compiled forward and backward; each timed call is one do_bench. (e): the four parity test
# files compile each kernel variant once; bench/parity.py's in-process run is smaller.
ESTIMATE_S = {"gemm": 10, "copy": 5, "train": 120, "profile": 15, "profile_eager": 40, "op_eager": 3,
              "op_compiled": 20, "op_triton": 5, "op_liger": 5, "pytest": 60, "parity": 25, "probe": 5}
PARITY_WORKERS = 8  # pytest-xdist processes for (e) on a GPU, where installed: Triton compiles on the CPU cores


def defaults(gpu: bool) -> dict:
    """Sizes by device, in one place: the GPU check's on a GPU, small ones (a smoke run) on a CPU."""
    if gpu:
        return dict(gemm_n=8192, copy_mib=1024, preset="smollm2-135m", batch=16, seq=1024, steps=10, warmup=3,
                    op_tokens=16384, parity_tokens=256)
    return dict(gemm_n=512, copy_mib=64, preset="tiny", batch=2, seq=64, steps=2, warmup=2, op_tokens=1024,
                parity_tokens=16)


# ---- budget, rows ----

def installed(module: str) -> bool:
    """Whether a module can be imported here, without importing it (the tests patch this)."""
    return importlib.util.find_spec(module) is not None


class Budget:
    def __init__(self, seconds: float, start: float):
        self.seconds, self.start = seconds, start

    def used(self) -> float:
        return time.monotonic() - self.start

    def left(self) -> float:
        return self.seconds - self.used()


def error_fields(exc: BaseException) -> dict:
    first = (str(exc).strip().splitlines() or [""])[0]
    frames = traceback.format_tb(exc.__traceback__)[-4:]
    return {"error": f"{type(exc).__name__}: {first}"[:500], "traceback": "".join(frames)[-3000:]}


class Recorder:
    """Rows in order; each appended to <out>/gpu_check_<device-slug>.jsonl as a bench.results.Row
    (flushed and fsynced) and the Markdown re-rendered atomically, so whatever kills the process,
    every row before it is on disk. `rows` keeps each row flat (Row.flat()) for the rendering."""

    def __init__(self, out: str, st: Stamp, budget: Budget, meta: dict):
        os.makedirs(out, exist_ok=True)
        self.out, self.stamp, self.budget, self.meta = out, st, budget, meta
        self.jsonl = st.path(out, "jsonl")
        self.md_path = st.path(out, "md")
        self.rows: list[dict] = []
        self.estimate_scale = 1.0
        self.running: tuple | None = None  # (section, name, labels, monotonic start) of the row in progress
        self.lock = threading.RLock()  # the watchdog writes its row between two of the main thread's, never inside one
        open(self.jsonl, "w").close()  # a fresh record per run

    def add(self, section: str, name: str, fields: dict, status: str = "ok", labels: dict | None = None) -> dict:
        """labels: what the row measured (its parameters); fields: what it produced (its metrics), with
        "reason" (skipped) or "error" (error) saying why it did not run."""
        with self.lock:
            return self._add(section, name, fields, status, labels or {})

    def _add(self, section: str, name: str, fields: dict, status: str, labels: dict) -> dict:
        metrics = {k: v for k, v in fields.items() if k not in ("reason", "error")}
        metrics["elapsed_s"] = round(self.budget.used(), 2)
        row = self.stamp.row({"section": section, "name": name, **labels}, metrics, status=status,
                             reason=fields.get("reason") or fields.get("error"))
        append_row(self.jsonl, row)
        flat = row.flat()
        self.rows.append(flat)
        self.render()
        print(f"[{flat['elapsed_s']:7.1f} s] ({section}) {name}: {console(flat)}", flush=True)
        return flat

    def render(self, final: bool = False) -> None:
        with self.lock:
            atomic_write_text(self.md_path, render_md(self.rows, self.stamp, self.meta, self.budget, final))

    def finish(self) -> None:
        """The summary row (the run's headlines, its row and error counts) and the final Markdown."""
        with self.lock:
            errors = sum(r["status"] == "error" for r in self.rows)
            append_row(self.jsonl, self.stamp.summary(
                headlines(self.rows), {"rows": len(self.rows), "errors": errors,
                                       "elapsed_s": round(self.budget.used(), 2)},
                section="summary", name="headlines", budget_s=self.budget.seconds, stopped=self.meta.get("stopped")))
            self.render(final=True)


def console(row: dict) -> str:
    if row["status"] == "skipped":
        return f"skipped: {row['reason']}"
    if row["status"] == "error":
        return f"ERROR {row['reason']}"
    keys = ("tflop_s", "gb_s", "tokens_per_s", "mfu_nominal", "mfu_measured", "loss", "ms", "total_ms", "summary",
            "max_abs_err", "probe_ok", "fallback_extra_ms_per_step")
    return ", ".join(f"{k} {row[k]:.4g}" if isinstance(row[k], float) else f"{k} {row[k]}"
                     for k in keys if row.get(k) is not None) or "ok"


class RowCap(BaseException):
    """Raised in the main thread when a row runs past its cap. A BaseException, so that no `except Exception`
    on the way (torch.compile's own error handling) takes it for a failure to recover from."""


@contextlib.contextmanager
def capped(seconds: float | None):
    """Interrupt the block with RowCap after `seconds` (SIGALRM: the main thread of a Unix process; the
    signal lands between two Python bytecodes, so a compile stuck in Python code is stopped, one stuck in
    native code only when it returns to Python). An alarm already set (pytest-timeout's) keeps its
    deadline and its handler: it fires first if it is due first, and is re-armed afterwards."""
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.getsignal(signal.SIGALRM)
    prev_delay, prev_interval = signal.getitimer(signal.ITIMER_REAL)
    prev_due = time.monotonic() + prev_delay if prev_delay else None

    def stop(signum, frame):
        if prev_due is not None and time.monotonic() >= prev_due - 1e-3 and callable(before):
            return before(signum, frame)
        raise RowCap(f"stopped at its cap of {seconds:.0f} s")

    signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, min(seconds, prev_delay) if prev_delay else seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, before)
        if prev_due is not None:
            signal.setitimer(signal.ITIMER_REAL, max(prev_due - time.monotonic(), 1e-3), prev_interval)


def run_row(rec: Recorder, section: str, name: str, estimate_s: float, fn, labels: dict | None = None,
            device: torch.device | None = None, cap_s: float | None = None) -> dict:
    """fn() -> measured fields (a "skipped" key: skipped for that reason; an "error" key: an error row), unless
    the estimate does not fit in the time left; an exception becomes an error row, and so does a row stopped at
    its cap (cap_s: a compile that hangs costs that row, not every row after it). With `device`, memory is
    freed after the row."""
    labels = dict(labels or {})
    left = rec.budget.left()
    estimate_s *= rec.estimate_scale
    if left < estimate_s:
        return rec.add(section, name, {"reason": f"time budget (needs ~{estimate_s:.0f} s, "
                                                 f"{max(left, 0):.0f} s left)"}, "skipped", labels)
    t0 = time.monotonic()
    rec.running = (section, name, labels, t0)
    try:
        with capped(cap_s):
            fields = fn()
        status = "error" if fields.get("error") else "ok"
        if fields.get("skipped"):
            reason = fields.pop("skipped")
            status, fields = "skipped", {**fields, "reason": reason}
    except (Exception, RowCap) as exc:  # noqa: BLE001 - any failure is a row, and the check goes on
        fields, status = error_fields(exc), "error"
    finally:
        if device is not None:  # after a row that ran (gc.collect is slow with compiled graphs around)
            free_memory(device)
    rec.running = None
    return rec.add(section, name, {**fields, "seconds": round(time.monotonic() - t0, 3)}, status, labels)


def start_watchdog(rec: Recorder, hard_stop_s: float) -> threading.Event:
    """A row that overruns the budget (a compile far slower than its estimate) is stopped at hard_stop_s:
    it is written as skipped, the Markdown is finished, and the process exits (0 unless a row failed), so
    the run ends in a known state before whoever lent the machine kills it. Set the returned event to
    call it off (main does when it returns: an in-process caller lives on)."""
    done = threading.Event()

    def watch():
        while rec.budget.used() < hard_stop_s:
            if done.wait(min(1.0, max(0.05, hard_stop_s - rec.budget.used()))):
                return
        with rec.lock:
            if done.is_set():
                return  # the main thread is then stopped between rows or inside one, never mid-write
            running = rec.running
            note = f"hard stop at {hard_stop_s:.0f} s (budget {rec.budget.seconds:.0f} s)"
            if running:
                section, name, labels, t0 = running
                rec.add(section, name, {"reason": f"time budget: {note}, stopped after "
                                                  f"{time.monotonic() - t0:.0f} s of this row"}, "skipped", labels)
            rec.meta["stopped"] = f"Stopped at the {note}" + (f" while running ({running[0]}) {running[1]}"
                                                              if running else "") + "; later rows did not run."
            rec.finish()
            errors = sum(r["status"] == "error" for r in rec.rows)
            print(f"bench/gpu_check.py: {rec.meta['stopped']} {len(rec.rows)} rows, {errors} errors; {rec.md_path}",
                  flush=True)
            sys.stdout.flush()
            os._exit(1 if errors else 0)
    threading.Thread(target=watch, name="gpu_check-watchdog", daemon=True).start()
    return done


@dataclasses.dataclass
class Ctx:
    args: argparse.Namespace
    device: torch.device
    rec: Recorder
    cfg: object = None
    gemm_tflops: float | None = None
    copy_gb_s: float | None = None
    kept: tuple | None = None  # (step, x, y) of the compiled triton-path model, for (c)
    last_train_s: float | None = None

    @property
    def gpu(self) -> bool:
        return self.device.type == "cuda"


# ---- (a) ceilings ----

def section_a(ctx: Ctx) -> None:
    a, dev = ctx.args, ctx.device
    dtype = torch.bfloat16 if ctx.gpu else torch.float32  # CPUs have no fast bf16 GEMM to speak of

    def gemm():
        r = gemm_tflop_s(a.gemm_n, dtype, dev)
        nominal = peak_tflops(dev)
        return {**r, "nominal_tflop_s": nominal, "fraction_of_nominal": r["tflop_s"] / nominal if nominal else None}

    def copy():
        r = copy_gb_s(a.copy_mib * MiB, dev)
        nominal = peak_gb_s(dev)
        return {**r, "mib": a.copy_mib, "nominal_gb_s": nominal,
                "fraction_of_nominal": r["gb_s"] / nominal if nominal else None}

    g = run_row(ctx.rec, "a", f"{str(dtype).removeprefix('torch.')} GEMM {a.gemm_n}^3", ESTIMATE_S["gemm"], gemm,
                device=dev)
    ctx.gemm_tflops = g.get("tflop_s")
    c = run_row(ctx.rec, "a", f"device copy {a.copy_mib} MiB", ESTIMATE_S["copy"], copy, device=dev)
    ctx.copy_gb_s = c.get("gb_s")


# ---- (b) training step ----

@contextlib.contextmanager
def tf32():
    """TF32 for fp32 matmuls while the training step runs, as the trainer and bench/train_step.py set it (a
    flag: nothing happens on a CPU); off again for (d) and (e), whose fp32 references must stay fp32."""
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before

def train_row(ctx: Ctx, name: str, builder: str, kernels: str | None) -> dict:
    a, dev, cfg = ctx.args, ctx.device, ctx.cfg
    base = allocated_mib(dev)  # what earlier rows keep (the triton-path model, for (c)) is not this row's
    if builder == "hf" and not installed("transformers"):
        return {"skipped": "transformers is not installed"}
    built = build(builder, kernels, cfg, dev)
    if isinstance(built, str):
        return {"skipped": built}
    model, loss_fn = built
    step = step_fn(model, loss_fn, True, dev, fused=True)
    x, y = batch(cfg, a.batch, a.seq, dev)
    t0 = time.perf_counter()
    loss = step(x, y)  # dynamo + inductor compile here
    sync(dev)
    first = time.perf_counter() - t0
    for _ in range(a.warmup - 1):  # autotuning, allocator
        loss = step(x, y)
    sync(dev)
    warm = time.perf_counter() - t0
    reset_peak_memory(dev)
    t0 = time.perf_counter()
    for _ in range(a.steps):
        loss = step(x, y)
    sync(dev)
    dt = time.perf_counter() - t0
    tps = a.batch * a.seq * a.steps / dt
    achieved = tps * flops_per_token(cfg, a.seq) / 1e12  # model TFLOP/s
    nominal = peak_tflops(dev)
    row = {"first_step_s": first, "warmup_s": warm, "warmup_steps": a.warmup, "steps": a.steps,
           "step_ms": dt / a.steps * 1e3, "tokens_per_s": tps, "model_tflop_s": achieved,
           "mfu_nominal": achieved / nominal if nominal else None,
           "mfu_measured": achieved / ctx.gemm_tflops if ctx.gemm_tflops else None,
           "peak_mib": None if base is None else peak_memory_mib(dev) - base, "loss": loss.item()}
    if kernels == "triton" and not ctx.gpu:
        row["note"] = CPU_TRITON
    if kernels == "triton":
        ctx.kept = (step, x, y)  # 135M parameters + AdamW state: kept for (c), which then compiles nothing
    return row


def section_b(ctx: Ctx) -> None:
    a = ctx.args
    labels = {"preset": a.preset, "layers": ctx.cfg.num_hidden_layers, "batch": a.batch, "seq": a.seq,
              "precision": "bf16 autocast" if ctx.gpu else "fp32", "optimizer": "AdamW(fused=True)"}
    for name, builder, kernels in TRAIN_ROWS:
        est = ESTIMATE_S["train"] if ctx.last_train_s is None else ctx.last_train_s * (1.3 if builder == "hf" else 1.0)
        with tf32():
            row = run_row(ctx.rec, "b", name, est, lambda: train_row(ctx, name, builder, kernels), labels, ctx.device,
                          cap_s=a.row_cap_s)
        if row["status"] == "ok":
            ctx.last_train_s = row["seconds"]


# ---- (c) profile ----

# Op families by kernel (CUDA) or operator (CPU) name, lower-cased; the first rule that matches wins.
FAMILY_RULES = [
    ("rmsnorm", r"rms_?norm"),
    ("rope", r"(?<![a-z])rope(?![a-z])"),
    ("swiglu", r"swiglu"),
    ("cross-entropy", r"cross_entropy|_ce_rows"),
    ("attention", r"flash|sdpa|scaled_dot_product|efficient_attention|fmha|attention"),
    ("GEMM", r"gemm|gemv|cutlass|cublas|xmma|nvjet|(?<![a-z])(mm|addmm|bmm|baddbmm|matmul|linear)(?![a-z])"),
    ("optimizer", r"adam|foreach|multi_tensor|optimizer"),
    ("elementwise/fused", r"triton_(poi|red|per|tem)_|cpp_fused|compiledfxgraph|elementwise"),
]
OUR_FAMILIES = ("rmsnorm", "rope", "swiglu", "cross-entropy")


def op_family(name: str) -> str:
    """The family of a profiled kernel or operator, by name:
    - our ops: names with rms_norm/rmsnorm (also add_rms_norm), rope (a word: not "properties"), swiglu,
      cross_entropy or _ce_rows (the custom ops smollm::* on a CPU, their Triton kernels on a GPU);
    - attention: flash, sdpa, scaled_dot_product, efficient_attention, fmha (before GEMM: fmha_cutlass*);
    - GEMM: gemm, gemv, cutlass, cublas, xmma, nvjet, or the word mm/addmm/bmm/baddbmm/matmul/linear
      (aten::mm, mkldnn::_linear_pointwise); a GEMM inside our cross-entropy counts as GEMM here;
    - optimizer: adam, foreach, multi_tensor, optimizer;
    - elementwise/fused: inductor's triton_poi_/triton_red_/triton_per_/triton_tem_ and cpp_fused kernels,
      eager elementwise kernels, and on a CPU a compiled graph's own time (CompiledFxGraph: its C++ kernels
      are not itemized there);
    - other: the rest (copies, memsets, launches, Python-side records)."""
    low = name.lower()
    for family, pattern in FAMILY_RULES:
        if re.search(pattern, low):
            return family
    return "other"


def summarize_profile(times: list[tuple[str, float, int]], top: int = 15) -> dict:
    """times: (name, microseconds, calls) -> the `top` most expensive with their share, and time per family."""
    total = sum(us for _, us, _ in times) or 1.0
    ranked = sorted(times, key=lambda t: -t[1])
    families: dict[str, float] = {}
    for name, us, _ in times:
        families[op_family(name)] = families.get(op_family(name), 0.0) + us
    return {"total_ms": total / 1e3,
            "top": [{"name": n[:200], "family": op_family(n), "ms": us / 1e3, "calls": c, "share": us / total}
                    for n, us, c in ranked[:top]],
            "families": {f: {"ms": us / 1e3, "share": us / total}
                         for f, us in sorted(families.items(), key=lambda kv: -kv[1])}}


def profiled_times(prof, device: torch.device) -> list[tuple[str, float, int]]:
    """(name, us, calls): each CUDA kernel's device time on a GPU; each operator's self CPU time on a CPU."""
    from torch.autograd import DeviceType

    events = prof.key_averages()
    if device.type == "cuda":
        return [(e.key, float(e.self_device_time_total), e.count) for e in events if e.device_type == DeviceType.CUDA]
    return [(e.key, float(e.self_cpu_time_total), e.count) for e in events]


def profile_step(ctx: Ctx) -> dict:
    from torch.profiler import ProfilerActivity, profile

    dev = ctx.device
    if ctx.kept is not None:
        step, x, y = ctx.kept
        what = "the compiled triton-path model of (b)"
    else:  # (b) did not leave one: eager, so nothing compiles here
        model = build("ours", "triton", ctx.cfg, dev)[0]
        step = step_fn(model, lambda m, x, y: m(x, y), False, dev, fused=True)
        x, y = batch(ctx.cfg, ctx.args.batch, ctx.args.seq, dev)
        step(x, y)  # Triton's JIT, the allocator
        what = "an eager triton-path model ((b)'s compiled one is missing)"
    sync(dev)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if ctx.gpu else [])
    with profile(activities=activities) as prof:
        step(x, y)
        sync(dev)
    return {"model": what, "metric": "CUDA kernel time" if ctx.gpu else "self CPU time per operator",
            "tokens": x.numel(), **summarize_profile(profiled_times(prof, dev))}


def section_c(ctx: Ctx) -> None:
    est = ESTIMATE_S["profile"] if ctx.kept is not None else ESTIMATE_S["profile_eager"]
    with tf32():
        run_row(ctx.rec, "c", "one triton-path step", est, lambda: profile_step(ctx), device=ctx.device)
    ctx.kept = None
    free_memory(ctx.device)


# ---- (d) ops ----

def kernel_op(name: str):
    """The function `name` from whichever of the kernels modules defines it, else None."""
    found = [getattr(m, name) for m in (K.rmsnorm, K.rope, K.swiglu, K.cross_entropy) if hasattr(m, name)]
    return found[0] if found else None


def extra_case(op: str, tokens: int, dtype: torch.dtype, device: torch.device) -> dict:
    """The ops smollm/kernels/ may add, with the bytes any implementation must move (forward + backward)."""
    g = torch.Generator().manual_seed(0)
    D, F, N = BK.D, BK.F, tokens
    e = torch.finfo(dtype).bits // 8

    def rand(*shape, scale=1.0, dt=dtype):
        return (scale * torch.randn(*shape, generator=g)).to(device, dt)

    if op == "add_rms_norm":
        # forward reads x (fp32 residual), delta (bf16), writes residual (fp32) + y (bf16); backward reads
        # d_residual (fp32), dy (bf16), residual (fp32), writes dx (fp32), d_delta (bf16)
        inputs = [rand(N, D, dt=torch.float32), rand(N, D), 1 + rand(D, scale=0.1, dt=torch.float32)]
        nbytes = (4 + e + 4 + e) * N * D + (4 + e + 4 + 4 + e) * N * D
        return {"inputs": inputs, "n_diff": 3, "bytes": nbytes, "autocast": True}
    if op == "swiglu_packed":
        # forward reads gate_up (N x 2F), writes y (N x F); backward reads dy + gate_up, writes d_gate_up
        return {"inputs": [rand(N, 2 * F, scale=3.0)], "n_diff": 1, "bytes": (3 + 5) * N * F * e, "autocast": False}
    raise ValueError(f"unknown extra op {op!r}")


def extra_implementation(op: str, impl: str):
    fused = kernel_op(op)
    ref = kernel_op(f"{op}_reference")
    if impl == "triton":
        return fused
    if impl in ("eager", "compiled"):
        if ref is None:
            return f"kernels has no {op}_reference"
        return ref if impl == "eager" else torch.compile(ref)
    return "Liger has no such fused op"


def extra_runner(fn, case: dict, device: torch.device):
    leaves = [x.detach().requires_grad_() if i < case["n_diff"] else x for i, x in enumerate(case["inputs"])]
    grads: list[torch.Tensor] = []
    amp = case["autocast"]

    def run():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = fn(*leaves)
        outs = list(out) if isinstance(out, (tuple, list)) else [out]
        if not grads:
            g = torch.Generator().manual_seed(1)
            grads.extend(torch.randn(o.shape, generator=g).to(o.device, o.dtype) for o in outs)
        return torch.autograd.grad(outs, leaves[:case["n_diff"]], grads)
    return run


def op_row(ctx: Ctx, op: str, impl: str, case: dict) -> dict:
    dev = ctx.device
    if not ctx.gpu and impl in ("triton", "liger"):
        return {"skipped": CPU_SKIP}
    if op in EXTRA_OPS:
        fn = extra_implementation(op, impl)
        nbytes = case["bytes"]
        run = None if isinstance(fn, str) else extra_runner(fn, case, dev)
    else:
        fn = BK.implementation(op, impl)
        nbytes = case["bytes"]["fwd+bwd"]
        run = None if isinstance(fn, str) else BK.runner(op, impl, fn, case, "fwd+bwd")
    if isinstance(fn, str):
        return {"skipped": fn, "bytes": nbytes}
    ms = time_ms(run, dev)
    gb_s = nbytes / (ms / 1e3) / 1e9
    row = {"ms": ms, "bytes": nbytes, "gb_s": gb_s, "copy_share": gb_s / ctx.copy_gb_s if ctx.copy_gb_s else None}
    if op == "ce":
        row["flops"] = case["flops"]["fwd+bwd"]
    return row


def section_d(ctx: Ctx) -> None:
    a, dev = ctx.args, ctx.device
    ops = a.ops or OPS + [op for op in EXTRA_OPS if kernel_op(op) is not None]
    for op in ops:
        labels = {"op": op, "tokens": a.op_tokens, "dtype": "bf16", "pass": "fwd+bwd"}
        try:  # the case is built once per op (unless no row can run); a failure (an unknown op) is an error row
            case = None
            if ctx.rec.budget.left() >= min(ESTIMATE_S[f"op_{impl}"] for impl in BK.IMPLS):
                case = (extra_case if op in EXTRA_OPS else BK.make_case)(op, a.op_tokens, torch.bfloat16, dev)
        except Exception as exc:  # noqa: BLE001
            ctx.rec.add("d", op, error_fields(exc), "error", labels)
            continue
        for impl in BK.IMPLS:
            run_row(ctx.rec, "d", f"{op}, {impl}", ESTIMATE_S[f"op_{impl}"],
                    lambda impl=impl: op_row(ctx, op, impl, case), {**labels, "impl": impl})
        del case
        free_memory(dev)


# ---- (e) parity ----

def pytest_row(ctx: Ctx) -> dict:
    tests = list(ctx.args.parity_tests)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests]
    deselected = None
    if not installed("liger_kernel"):
        cmd += ["-k", "not liger"]
        deselected = "liger-kernel is not installed: its comparison deselected"
    if ctx.gpu and installed("xdist"):
        cmd += ["-n", str(PARITY_WORKERS)]
    # Run first, the tests must leave the training rows their time: at most --parity-timeout-s.
    timeout = max(1.0, min(ctx.rec.budget.left() - 5, ctx.args.parity_timeout_s))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)}
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
        out, code, timed_out = proc.stdout + proc.stderr, proc.returncode, False
    except subprocess.TimeoutExpired as exc:
        out = "".join(x.decode(errors="replace") if isinstance(x, bytes) else x for x in (exc.stdout, exc.stderr) if x)
        code, timed_out = None, True
    print(out[-6000:], flush=True)
    lines = [ln.strip("= ") for ln in out.splitlines() if re.search(r"\d+ (passed|failed|error)", ln)]
    summary = lines[-1] if lines else (out.strip().splitlines() or ["(no output)"])[-1][:300]
    row = {"command": " ".join(cmd[1:]), "returncode": code, "summary": summary, "deselected": deselected}
    if timed_out:
        row["skipped"] = f"time budget: pytest stopped after {timeout:.0f} s (last: {summary})"
    elif code != 0:
        row.update(error=f"parity tests failed (exit {code}): {summary}", output_tail=out[-4000:])
    return row


def probe_row(ctx: Ctx) -> dict:
    """The fused cross-entropy accumulates grad_weight with one fp32-output GEMM per chunk where a once-per-device
    probe says that works (kernels/cross_entropy.py), else with a fallback: the product in bf16, then an fp32
    add. A failed probe is no parity failure (the fallback's numbers are tested too) but a cost, measured here
    at the training step's chunk size: each way, and a bare bf16 GEMM of the same shape as the floor."""
    dev, a = ctx.device, ctx.args
    V, D, N = ctx.cfg.vocab_size, ctx.cfg.hidden_size, a.batch * a.seq
    rows = min(CE.budget_chunk_rows(N, V, 2, CE.CHUNK_BYTES), N)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(rows, V, generator=g).to(dev, torch.bfloat16)  # (C, V)
    h = torch.randn(rows, D, generator=g).to(dev, torch.bfloat16)  # (C, D)
    acc = torch.zeros(V, D, device=dev)  # (V, D) fp32
    ok = CE.fp32_out_gemm(dev, torch.bfloat16)
    chunks = -(-N // rows)
    row = {"probe_ok": ok, "chunk_rows": rows, "chunks_per_step": chunks, "vocab": V,
           "bf16_gemm_ms": time_ms(lambda: logits.t() @ h, dev),
           "fallback_ms": time_ms(lambda: CE.accumulate_grad_weight(acc, logits, h, fp32_out=False), dev)}
    if ok:
        row["fp32_out_ms"] = time_ms(lambda: CE.accumulate_grad_weight(acc, logits, h, fp32_out=True), dev)
    best = row.get("fp32_out_ms", row["bf16_gemm_ms"])
    row["fallback_extra_ms_per_step"] = (row["fallback_ms"] - best) * chunks
    row["uses"] = "the fp32-output GEMM" if ok else "the fallback (bf16 product + fp32 add)"
    if not ctx.gpu:
        row["note"] = "CPU: torch has no fp32-output bf16 GEMM here, the fallback is expected"
    return row


def section_e(ctx: Ctx) -> None:
    a = ctx.args
    run_row(ctx.rec, "e", "fp32-output GEMM probe", ESTIMATE_S["probe"], lambda: probe_row(ctx), device=ctx.device)
    use_pytest = a.parity == "pytest" or (a.parity == "auto" and installed("pytest"))
    if use_pytest:
        run_row(ctx.rec, "e", "parity tests (pytest)", ESTIMATE_S["pytest"], lambda: pytest_row(ctx))
        return
    if a.parity == "auto":
        ctx.rec.add("e", "parity tests (pytest)", {"reason": "pytest not installed: bench/parity.py instead"},
                    "skipped")
    holder = {}

    def measure():
        from bench import parity

        holder["rows"] = parity.measure(a.parity_tokens, ctx.device.type)
        return {"tokens": a.parity_tokens, "rows": len(holder["rows"])}
    run_row(ctx.rec, "e", "bench/parity.py measure()", ESTIMATE_S["parity"], measure, device=ctx.device)
    by_key: dict[tuple, list] = {}
    for r in holder.get("rows", []):
        by_key.setdefault((r["op"], r["dtype"]), []).append(r)
    for (op, dtype), rs in by_key.items():
        worst = max(rs, key=lambda r: r["max_abs_err"])
        ctx.rec.add("e", f"{op} {dtype}", {"max_abs_err": worst["max_abs_err"], "worst_tensor": worst["tensor"],
                                           "reference_same_dtype_err": max(r["reference_same_dtype_err"] for r in rs),
                                           "per_tensor": {r["tensor"]: r["max_abs_err"] for r in rs}},
                    labels={"op": op, "dtype": dtype, "tokens": a.parity_tokens})


# ---- the Markdown ----

def fmt(v, spec: str = ".3g", none: str = "-") -> str:
    return none if v is None else format(v, spec)


def num(v: float) -> str:
    """A rate readable at any scale: 1,234 / 56.7 / 0.00123."""
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}" if v >= 10 else f"{v:.3g}"


def status_cell(r: dict) -> str:
    return f"skipped: {r['reason']}" if r["status"] == "skipped" else f"**error**: {r['reason']}"


def probe_text(r: dict) -> str:
    """The probe row in words: which way grad_weight accumulates, and what the fallback costs per step."""
    ways = f"fallback {r['fallback_ms']:.3f} ms" + (f", fp32-output GEMM {r['fp32_out_ms']:.3f} ms" if "fp32_out_ms" in r
                                                    else f", bare bf16 GEMM {r['bf16_gemm_ms']:.3f} ms")
    verdict = "works" if r["probe_ok"] else "unavailable (CPU)" if r.get("note") else "FAILED"
    return (f"{verdict}: training uses {r['uses']}; per chunk {ways}; the fallback costs "
            f"{r['fallback_extra_ms_per_step']:.2f} ms per step ({r['chunks_per_step']} chunks)")


def with_ceilings(rows: list[dict]) -> list[dict]:
    """The rows with (b)'s MFU against the measured GEMM rate and (d)'s share of the measured copy bandwidth
    filled in from (a)'s rows where they ran before (a) (the default order runs (b) first)."""
    gemm = next((r for r in rows if r["section"] == "a" and r["status"] == "ok" and r.get("tflop_s")), None)
    copy = next((r for r in rows if r["section"] == "a" and r["status"] == "ok" and r.get("gb_s")), None)
    out = []
    for r in rows:
        if r["status"] == "ok" and r["section"] == "b" and r.get("mfu_measured") is None and gemm:
            r = {**r, "mfu_measured": r["model_tflop_s"] / gemm["tflop_s"]}
        elif r["status"] == "ok" and r["section"] == "d" and r.get("copy_share") is None and copy and r.get("gb_s"):
            r = {**r, "copy_share": r["gb_s"] / copy["gb_s"]}
        out.append(r)
    return out


def find(rows, section, name):
    return next((r for r in rows if r["section"] == section and r["name"] == name and r["status"] == "ok"), None)


def headlines(rows: list[dict]) -> list[str]:
    rows = with_ceilings(rows)
    out = []
    gemm = next((r for r in rows if r["section"] == "a" and "tflop_s" in r and r["status"] == "ok"), None)
    copy = next((r for r in rows if r["section"] == "a" and "gb_s" in r and r["status"] == "ok"), None)
    if gemm:
        out.append(f"{gemm['name']}: {num(gemm['tflop_s'])} TFLOP/s" + (
            f" = {gemm['fraction_of_nominal']:.0%} of the nominal {gemm['nominal_tflop_s']:,.0f}"
            if gemm.get("fraction_of_nominal") else ""))
    if copy:
        out.append(f"{copy['name']}: {num(copy['gb_s'])} GB/s (read + written)" + (
            f" = {copy['fraction_of_nominal']:.0%} of the nominal {copy['nominal_gb_s']:,.0f}"
            if copy.get("fraction_of_nominal") else ""))
    tri, tc, hf = (find(rows, "b", n) for n, _, _ in TRAIN_ROWS)
    if tri and tc:
        out.append(f"training step: triton path {tri['tokens_per_s'] / tc['tokens_per_s']:.2f}x the torch path "
                   "(both compiled)" + (" (CPU: Triton's interpreter, meaningless)" if tri.get("note") else ""))
    if tri and hf:
        out.append(f"training step: triton path {tri['tokens_per_s'] / hf['tokens_per_s']:.2f}x transformers "
                   "(both compiled)")
    for r in (tri, tc, hf):
        if r:
            out.append(f"{r['name']}: {num(r['tokens_per_s'])} tokens/s, MFU {fmt(r['mfu_nominal'], '.1%')} of the "
                       f"nominal peak, {fmt(r['mfu_measured'], '.1%')} of the measured GEMM rate")
    ops = sorted({r["op"] for r in rows if r["section"] == "d" and "op" in r}, key=lambda o: (OPS + EXTRA_OPS).index(o)
                 if o in OPS + EXTRA_OPS else 99)
    for op in ops:
        measured = [r for r in rows if r["section"] == "d" and r.get("op") == op and r["status"] == "ok"
                    and r.get("copy_share")]
        best = next((r for r in measured if r["impl"] == "triton"), None) or min(measured, key=lambda r: r["ms"],
                                                                                  default=None)
        if best:
            out.append(f"{op} fwd+bwd at {best['tokens']:,} tokens, {best['impl']}: {best['ms']:.3f} ms, "
                       f"{num(best['gb_s'])} GB/s = {best['copy_share']:.0%} of the measured copy bandwidth")
        if op == "ce" and best and gemm:
            n, d, v = best["tokens"], BK.D, BK.V
            gemm_ms = 3 * 2 * n * d * v / (gemm["tflop_s"] * 1e12) * 1e3
            out.append(f"cross-entropy fwd+bwd ({best['impl']}) {best['ms']:.3f} ms = {best['ms'] / gemm_ms:.2f}x its "
                       f"3 GEMMs' time at the measured GEMM rate ({gemm_ms:.3f} ms)")
    for r in rows:
        if r["section"] == "e" and r["name"] == "fp32-output GEMM probe" and r["status"] == "ok" and not r["probe_ok"] \
                and not r.get("note"):  # on a GPU a failed probe costs speed: a headline
            out.append(f"fp32-output GEMM probe {probe_text(r)}")
        if r["section"] == "e" and r["name"] == "parity tests (pytest)" and r["status"] != "skipped":
            out.append(f"kernel parity tests on this device: {r.get('summary') or r.get('reason')}")
    errors = [r for r in rows if r["status"] == "error"]
    if errors:
        out.append(f"**{len(errors)} row(s) failed**: " + "; ".join(f"({r['section']}) {r['name']}" for r in errors))
    return out


def table(head: list[str], body: list[list[str]]) -> list[str]:
    return (["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
            + ["| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in row) + " |" for row in body])


def render_section(sec: str, rows: list[dict]) -> list[str]:
    rs = [r for r in rows if r["section"] == sec]
    body = []
    if sec == "a":
        for r in rs:
            if r["status"] != "ok":
                body.append([r["name"], status_cell(r), "", ""])
            elif "tflop_s" in r:
                body.append([r["name"], f"{r['ms']:.3f}", f"{num(r['tflop_s'])} TFLOP/s",
                             fmt(r.get("fraction_of_nominal"), ".0%")])
            else:
                body.append([r["name"], f"{r['ms']:.3f}", f"{num(r['gb_s'])} GB/s", fmt(r.get("fraction_of_nominal"), ".0%")])
        return table(["row", "ms (median)", "rate", "of nominal peak"], body)
    if sec == "b":
        for r in rs:
            if r["status"] != "ok":
                body.append([r["name"], status_cell(r)] + [""] * 7)
                continue
            body.append([r["name"] + (f" ({r['note']})" if r.get("note") else ""),
                         f"{r['first_step_s']:.1f} / {r['warmup_s']:.1f} ({r['warmup_steps']})",
                         f"{r['step_ms']:,.1f}", num(r["tokens_per_s"]), fmt(r["mfu_nominal"], ".1%"),
                         fmt(r["mfu_measured"], ".1%"), fmt(r["peak_mib"], ",.0f"), f"{r['loss']:.3f}",
                         f"{r['seconds']:.0f}"])
        lines = []
        if rs:
            r0 = rs[0]
            lines += [f"Preset {r0.get('preset')} ({r0.get('layers')} layer{'' if r0.get('layers') == 1 else 's'}), micro-batch {r0.get('batch')} x "
                      f"{r0.get('seq')}, {r0.get('precision')}, {r0.get('optimizer')}; first step (compile) / all "
                      "warm-up steps apart from the timed ones; MFU = model FLOPs (PaLM count) per second over the "
                      "nominal bf16 peak, and over the GEMM rate measured in (a).", ""]
        lines += table(["method", "compile s / warm-up s (steps)", "ms per step", "tokens/s", "MFU nominal",
                        "MFU measured", "peak MiB", "loss", "row s"], body)
        tri, tc, hf = (find(rows, "b", n) for n, _, _ in TRAIN_ROWS)
        ratios = []
        if tri and tc:
            ratios.append(f"- triton / torch path (compiled): **{tri['tokens_per_s'] / tc['tokens_per_s']:.2f}x**")
        if tri and hf:
            ratios.append(f"- triton path / transformers (compiled): **{tri['tokens_per_s'] / hf['tokens_per_s']:.2f}x**")
        return lines + ([""] + ratios if ratios else [])
    if sec == "c":
        lines = []
        for r in rs:
            if r["status"] != "ok":
                lines += [f"{r['name']}: {status_cell(r)}"]
                continue
            lines += [f"{r['model']}, {r['tokens']:,} tokens; {r['metric']}, {r['total_ms']:.2f} ms in all.", ""]
            lines += table(["family", "ms", "share"], [[f + (" (ours)" if f in OUR_FAMILIES else ""), f"{v['ms']:.3f}",
                                                        f"{v['share']:.1%}"] for f, v in r["families"].items()])
            lines += ["", f"The {len(r['top'])} most expensive:", ""]
            lines += table(["kernel / op", "family", "calls", "ms", "share"],
                           [[f"`{t['name'][:90]}`", t["family"], t["calls"], f"{t['ms']:.3f}", f"{t['share']:.1%}"]
                            for t in r["top"]])
        return lines or ["(no rows)"]
    if sec == "d":
        for r in rs:
            if r["status"] != "ok":
                body.append([r.get("op", r["name"]), r.get("impl", ""), status_cell(r), "", ""])
            else:
                body.append([r["op"], r["impl"], f"{r['ms']:.3f}", num(r["gb_s"]), fmt(r.get("copy_share"), ".0%")])
        tokens = next((r["tokens"] for r in rs if "tokens" in r), None)
        return ([f"{fmt(tokens, ',')} tokens, bf16, forward+backward; GB/s = the bytes any implementation must move "
                 "/ time; share = of the copy bandwidth measured in (a).", ""]
                + table(["op", "implementation", "ms", "GB/s", "of copy BW"], body))
    if sec == "e":
        for r in rs:
            if r["status"] != "ok":
                body.append([r["name"], status_cell(r), "", ""])
            elif "probe_ok" in r:
                body.append([r["name"], probe_text(r), "", f"{r['chunk_rows']:,} per chunk"])
            elif "summary" in r:
                body.append([r["name"], r["summary"] + (f" ({r['deselected']})" if r.get("deselected") else ""), "", ""])
            elif "max_abs_err" in r:
                body.append([r["name"], f"{r['max_abs_err']:.2e} ({r['worst_tensor']})",
                             f"{r['reference_same_dtype_err']:.2e}", r["tokens"]])
            else:
                body.append([r["name"], f"{r.get('rows')} tensors compared", "", r.get("tokens", "")])
        return table(["row", "result / max abs error vs fp32 reference (worst tensor)", "reference in same dtype",
                      "tokens"], body)
    return []


def render_md(rows: list[dict], st: Stamp, meta: dict, budget: Budget, final: bool) -> str:
    v = st.versions
    lines = [f"# GPU check: {st.device}", "",
             f"`python -m bench.gpu_check` at commit {st.commit}, started {meta['started']}; torch {v['torch']}, "
             f"triton {v['triton']}, Python {v['python']}. Budget {budget.seconds:.0f} s, "
             f"{budget.used():.0f} s used" + ("" if final else " so far (running, or stopped here)") + ".", ""]
    if meta.get("stopped"):
        lines += [f"**{meta['stopped']}**", ""]
    if meta.get("cpu"):
        lines += ["No GPU: this is a CPU smoke run; the Triton rows run Triton's interpreter (their timings mean "
                  "nothing) and every figure is the CPU's.", ""]
    heads = headlines(rows)
    rows = with_ceilings(rows)
    lines += ["## Headlines", ""] + ([f"- {h}" for h in heads] or ["(none yet)"]) + [""]
    for sec in meta["sections"]:
        lines += [f"## ({sec}) {SECTIONS[sec]}", ""] + render_section(sec, rows) + [""]
    return "\n".join(lines)


# ---- main ----

def parse_args(argv, gpu: bool) -> argparse.Namespace:
    d = defaults(gpu)
    p = cli(__doc__)
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


def main(argv=None, start: float | None = None) -> int:
    """The check; `start` (monotonic seconds) is when the budget began: the script passes its import time."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    args = parse_args(argv, device.type == "cuda")
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


if __name__ == "__main__":
    sys.exit(main(start=START))
