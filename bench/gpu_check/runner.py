"""The GPU check's budget runner: the time budget, the recorder (each row to .jsonl and the Markdown as it is
measured), a row's run (its estimate against the time left, its cap, its failure as an error row), the
watchdog that ends a run overrunning the budget, and Ctx, what the sections share."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import os
import signal
import sys
import threading
import time
import traceback

import torch

from bench.gpu_check.render import console, headlines, render_md
from bench.measure import free_memory
from bench.results import Stamp, append_row
from smollm.files import atomic_write_text


def installed(module: str) -> bool:
    """Whether a module can be imported here, without importing it (the sections call runner.installed, so a
    test that patches this attribute reaches every one of them)."""
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
