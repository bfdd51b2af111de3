"""Decoding on a CPU with the matrix product each weight runs fastest at a few rows, swapped into the
model from outside for the duration of a generation (as gpt-fast's quantize.py swaps its Linears):

    with cpu_decode(model, batch=len(prompts)):
        generate(model, prompts, ...)

A decode step multiplies a (batch, K) activation by every weight, and on a CPU how fast that goes
depends far more on the BLAS call than on the bytes: a single-row MKL call runs on one thread, the
same product over the weight's two row halves as one batched call runs on two, and a column-major
or oneDNN-prepacked copy takes yet other kernels. Which wins depends on the machine, the shape and
the batch, so `tune` times the candidates once per weight shape and batch size.

Inside `cpu_decode` every bias-free nn.Linear of the model is replaced by a `DecodeLinear` holding
the same weight Parameter and the chosen product, which it uses only for activations of exactly
`batch` rows (decode steps, and the head at prefill, which sees only each prompt's last position);
anything else (a prefill of many tokens) goes through F.linear as in nn.Linear. On exit the
model's own modules are put back, the same objects, so a forward or a training step outside
generation computes exactly what it would have. The model module knows nothing of
this: tunings and prepared copies live here, per model, and die with it.
"""

from __future__ import annotations

import contextlib
import time
import weakref
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

PRODUCTS = ("linear", "column-major", "w_xt", "split", "onednn")


def _weight_state(w: torch.Tensor) -> tuple[int, int]:
    """Changes whenever the weight's values may have: an in-place update bumps its version counter,
    a new `.data` (a dtype or device move) a new data pointer."""
    return w._version, w.data_ptr()


class DecodeLinear(nn.Module):
    """One bias-free nn.Linear's weight (the same Parameter, so the same state-dict key, tying and
    optimizer state) with another way to compute x W^T for activations of exactly `rows` rows:

    - "linear":       F.linear, as nn.Linear;
    - "column-major": F.linear on a column-major copy of W (another BLAS kernel);
    - "w_xt":         (W x^T)^T, the same numbers up to summation order;
    - "split":        W's two row halves as one batched product: ATen runs the halves on two
                      threads, where one single-row MKL call uses one;
    - "onednn":       oneDNN with a copy of W prepacked for `rows` rows.

    Activations of any other number of rows go through F.linear on the weight itself.
    """

    def __init__(self, linear: nn.Linear, product: str, rows: int):
        super().__init__()
        if product not in PRODUCTS:
            raise ValueError(f"product must be one of {PRODUCTS}, got {product!r}")
        if linear.bias is not None:
            raise ValueError("DecodeLinear takes an nn.Linear without bias")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight
        self.product, self.rows = product, rows
        self.source = _weight_state(self.weight)  # what the prepared copy was made from
        with torch.no_grad():
            w = self.weight.detach()  # (N, K)
            prepared = None
            if product == "column-major":
                prepared = w.t().contiguous().t()
            elif product == "onednn":
                prepared = torch.ops.mkldnn._reorder_linear_weight(w, rows)
        self.register_buffer("prepared", prepared, persistent=False)

    def is_current(self, linear: nn.Linear, product: str, rows: int) -> bool:
        """Made for this linear, product and row count, from the weight's present values."""
        return (self.weight is linear.weight and (self.product, self.rows) == (product, rows)
                and self.source == _weight_state(linear.weight))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, x.shape[-1])  # (M, K)
        M = x2.shape[0]
        if M != self.rows or self.product == "linear":
            return F.linear(x, self.weight)
        if self.product == "column-major":
            return F.linear(x, self.prepared)
        if self.product == "w_xt":
            y = (self.weight @ x2.t()).t()  # (M, N)
        elif self.product == "split":
            N, K = self.weight.shape
            y = torch.bmm(self.weight.view(2, N // 2, K), x2.t().expand(2, K, M))  # (2, N/2, M)
            y = y.permute(2, 0, 1).reshape(M, N)  # (M, N)
        else:
            y = torch.ops.mkldnn._linear_pointwise(x2, self.prepared, None, "none", [], "")  # (M, N)
        return y.reshape(*x.shape[:-1], self.out_features)


@dataclass
class _Tuned:
    """What cpu_decode keeps for one model between generations."""

    choices: dict = field(default_factory=dict)  # (batch, for_compile) -> {weight shape: product}
    # The last prepared modules only: a prepacked copy of every weight per batch size would double
    # the memory each time.
    prepared: dict = field(default_factory=dict)  # nn.Linear -> DecodeLinear


_TUNED: weakref.WeakKeyDictionary[nn.Module, _Tuned] = weakref.WeakKeyDictionary()


def linears(model: nn.Module) -> list[tuple[nn.Module, str, nn.Linear]]:
    """(parent, attribute name, module) of every bias-free nn.Linear of the model."""
    return [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
            if isinstance(child, nn.Linear) and child.bias is None]


def _groups(model: nn.Module) -> dict[tuple[int, int], list[nn.Linear]]:
    """The Linears by weight shape, each weight once (a Linear sharing another's weight adds nothing
    to a step's time)."""
    groups: dict[tuple[int, int], list[nn.Linear]] = {}
    seen = set()
    for _, _, lin in linears(model):
        if id(lin.weight) not in seen:
            seen.add(id(lin.weight))
            groups.setdefault(tuple(lin.weight.shape), []).append(lin)
    return groups


def _seconds(modules: list[nn.Module], batch: int) -> float:
    """Best of 3 passes over all the modules of one shape, each weight cold in cache as in a step."""
    # Its own generator: tuning must not move the global RNG that training depends on.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, modules[0].in_features, dtype=modules[0].weight.dtype, generator=g)  # (B, K)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for m in modules:
            m(x)
        best = min(best, time.perf_counter() - t0)
    return best


@torch.no_grad()
def tune(model: nn.Module, batch: int, for_compile: bool = False,
         min_gain: float = 0.9) -> dict[tuple[int, int], str]:
    """{weight shape: product} for decoding `batch` rows: the fastest candidate for each group of
    same-shaped weights, unless plain nn.Linear is within 1 - min_gain of it. Cached per model and
    (batch, for_compile); the model is not changed. oneDNN is not offered `for_compile` (inductor
    lowers that op only for weights it froze itself)."""
    tuned = _TUNED.setdefault(model, _Tuned())
    if (batch, for_compile) in tuned.choices:
        return tuned.choices[(batch, for_compile)]
    groups = _groups(model)
    candidates = ["linear", "column-major", "w_xt", "split"]
    dtypes = {lin.weight.dtype for mods in groups.values() for lin in mods}
    if not for_compile and torch.backends.mkldnn.is_available() and dtypes <= {torch.float32, torch.bfloat16}:
        candidates.append("onednn")
    choice = {}
    for shape, modules in groups.items():
        timings = {name: _seconds([DecodeLinear(m, name, batch) for m in modules], batch)
                   for name in candidates if not (name == "split" and shape[0] % 2)}
        best = min(timings, key=timings.get)
        choice[shape] = best if timings[best] <= min_gain * timings["linear"] else "linear"
    tuned.choices[(batch, for_compile)] = choice
    return choice


@contextlib.contextmanager
def cpu_decode(model: nn.Module, batch: int, for_compile: bool = False):
    """Within: every bias-free nn.Linear of a CPU model replaced by a DecodeLinear with the product
    `tune` chose for `batch` rows (yields that choice); on exit: the model's own modules back. A model
    on another device is left as it is (yields {}). The prepared copies (column-major, prepacked)
    are kept for the next call and rebuilt for a weight that changed since (a training step between
    two generations). `for_compile`: the decode step will be torch.compiled."""
    if next(model.parameters()).device.type != "cpu":
        yield {}
        return
    if any(isinstance(m, DecodeLinear) for m in model.modules()):
        raise RuntimeError("cpu_decode is already active on this model")
    choice = tune(model, batch, for_compile)
    tuned = _TUNED[model]
    found = linears(model)
    prepared = {}
    for _, _, lin in found:
        product = choice[tuple(lin.weight.shape)]
        old = tuned.prepared.get(lin)
        prepared[lin] = old if old is not None and old.is_current(lin, product, batch) else \
            DecodeLinear(lin, product, batch)
    tuned.prepared = prepared
    try:
        for parent, name, lin in found:
            setattr(parent, name, prepared[lin])
        yield choice
    finally:
        for parent, name, lin in found:
            setattr(parent, name, lin)
