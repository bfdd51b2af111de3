"""How the benchmarks time and weigh things, in one place: on a GPU, CUDA events through
triton.testing.do_bench (L2 flushed between runs, median) and torch.cuda's peak counter; on a CPU,
the wall clock (median of at least 5 runs and 1 s) and torch.profiler's allocation events (the same
per-tensor accounting as torch.cuda.max_memory_allocated)."""

from __future__ import annotations

import statistics
import time

import torch


# Peak memory bandwidth of the GPUs we report against (GB/s, the vendors' figures; for the A100 the
# 80 GB part). The A10G row is the reference card: its roofline is printed on every machine.
PEAK_GB_S = [("A10G", 600.0), ("H200", 4800.0), ("H100", 3350.0), ("A100", 2039.0), ("L40S", 864.0),
             ("L4", 300.0), ("4090", 1008.0), ("3090", 936.0)]
A10G_GB_S = 600.0


def peak_gb_s(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((bw for key, bw in PEAK_GB_S if key in name), None)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn, device: torch.device, min_runs: int = 5, min_seconds: float = 1.0, max_runs: int = 50) -> float:
    """Median milliseconds of one call of fn (after one warm-up call)."""
    if device.type == "cuda":
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))
    fn()
    times = []
    stop = time.perf_counter() + min_seconds
    while len(times) < min_runs or (time.perf_counter() < stop and len(times) < max_runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def peak_extra_bytes(fn, device: torch.device) -> int:
    """Peak tensor memory allocated while fn runs, beyond what was allocated before it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    current = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        current += e.nbytes()  # negative for a free
        peak = max(peak, current)
    return peak


# ---- the device's own ceilings and memory bookkeeping (bench/gpu_check); every device branch here ----

def gemm_tflop_s(n: int, dtype: torch.dtype, device: torch.device) -> dict:
    """Median time and TFLOP/s of torch.mm of two n x n matrices (2 n^3 FLOPs)."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    ms = time_ms(lambda: torch.mm(a, b), device)
    return {"n": n, "dtype": str(dtype).removeprefix("torch."), "ms": ms, "tflop_s": 2 * n ** 3 / (ms / 1e3) / 1e12}


def copy_gb_s(nbytes: int, device: torch.device) -> dict:
    """Median time of one contiguous copy_ of nbytes, and GB/s counting the bytes read and written."""
    src = torch.ones(nbytes, dtype=torch.uint8, device=device)  # written: untouched pages would read as free
    dst = torch.zeros_like(src)
    ms = time_ms(lambda: dst.copy_(src), device)
    return {"bytes": nbytes, "ms": ms, "gb_s": 2 * nbytes / (ms / 1e3) / 1e9}


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mib(device: torch.device) -> float | None:
    """The allocator's high-water mark since reset_peak_memory (GPU); None on a CPU (no such counter)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return None


def allocated_mib(device: torch.device) -> float | None:
    """Tensor memory allocated now (GPU); None on a CPU."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / 2 ** 20
    return None


def free_memory(device: torch.device) -> None:
    """Collect what the caller dropped and hand the cached blocks back (GPU)."""
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
