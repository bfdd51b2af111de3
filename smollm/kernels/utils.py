"""Small helpers shared by the kernels."""

import functools

import torch

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def check_dtype(t: torch.Tensor, name: str) -> None:
    if t.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{name} has dtype {t.dtype}; expected one of fp32, bf16, fp16")


def as_rows(x: torch.Tensor, name: str) -> torch.Tensor:
    """(..., D) -> (N, D) with unit stride along D. A view when the layout allows, else a copy:
    kernels index rows by one stride, so odd layouts are handled by copying, never refused."""
    check_dtype(x, name)
    if x.dim() == 0:
        raise ValueError(f"{name} must have at least one dimension")
    if x.stride(-1) != 1:
        x = x.contiguous()
    return x.reshape(-1, x.shape[-1])


@functools.lru_cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def num_programs(device: torch.device, rows: int) -> int:
    """Programs for row-band reductions: a few per SM on a GPU, a handful under the interpreter."""
    per_device = 4 * _sm_count(device.index or 0) if device.type == "cuda" else 4
    return max(1, min(rows, per_device))
