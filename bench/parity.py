"""Max errors of every Triton kernel (forward and each gradient) against the fp32 reference on the
same inputs, at the model's shapes, in fp32 and bf16; beside each bf16 figure, the error of PyTorch's own bf16 run
of the reference (what bf16 rounding costs anyway). On a CPU the kernels run in Triton's
interpreter; on a GPU, compiled.

    python bench/parity.py [--tokens 256]     # writes bench/results/parity_<device>.{md,json}
"""

import argparse
import json
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import kernels as K  # noqa: E402
from bench.results_io import write_results  # noqa: E402


def _grads(fn, inputs, weights_for_sum):
    """Run fn, backprop sum(out_i * w_i), return [outputs..., grads...] as fp32."""
    leaves = [x.detach().requires_grad_() for x in inputs]
    outs = fn(*leaves)
    outs = outs if isinstance(outs, tuple) else (outs,)
    total = sum((o.float() * w).sum() for o, w in zip(outs, weights_for_sum))
    total.backward()
    return [o.detach().float() for o in outs] + [x.grad.float() for x in leaves]


def cases(tokens: int, device: str):
    g = torch.Generator().manual_seed(0)

    def rand(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=g)).to(device)

    B, T = 2, tokens // 2
    cos, sin = K.rope.rope_tables(64, 2048, 10000.0)
    cos, sin = cos[:T].to(device), sin[:T].to(device)
    targets = torch.randint(0, 49152, (tokens,), generator=g).to(device)
    targets[::7] = -100
    return [
        ("rms_norm", ["y", "dx", "dw"], lambda x, w: K.rmsnorm.rms_norm(x, w), lambda x, w: K.rmsnorm.rms_norm_reference(x, w),
         [rand(tokens, 576), 1 + rand(576, scale=0.1)], [rand(tokens, 576)]),
        ("rope", ["q", "k", "dq", "dk"], lambda q, k: K.rope.rope(q, k, cos, sin), lambda q, k: K.rope.rope_reference(q, k, cos, sin),
         [rand(B, T, 9, 64), rand(B, T, 3, 64)], [rand(B, T, 9, 64), rand(B, T, 3, 64)]),
        ("swiglu", ["y", "d_gate", "d_up"], K.swiglu.swiglu, K.swiglu.swiglu_reference,
         [rand(tokens, 1536, scale=3), rand(tokens, 1536)], [rand(tokens, 1536)]),
        ("linear_cross_entropy", ["loss", "d_hidden", "d_weight"],
         lambda h, w: K.cross_entropy.linear_cross_entropy(h, w, targets), lambda h, w: K.cross_entropy.linear_cross_entropy_reference(h, w, targets),
         [rand(tokens, 576), rand(49152, 576, scale=576 ** -0.5)], [torch.ones((), device=device)]),
    ]


def measure(tokens: int, device: str) -> list[dict]:
    rows = []
    for name, labels, fused, reference, inputs, out_weights in cases(tokens, device):
        for dtype in (torch.float32, torch.bfloat16):
            cast = [x.to(dtype) for x in inputs]
            truth = _grads(reference, [x.float() for x in cast], out_weights)  # same (rounded) inputs
            got = _grads(fused, cast, out_weights)
            ref_same_dtype = _grads(reference, cast, out_weights)
            for label, g_, r_, t_ in zip(labels, got, ref_same_dtype, truth):
                rows.append({"op": name, "tensor": label, "dtype": str(dtype).removeprefix("torch."),
                             "max_abs_err": (g_ - t_).abs().max().item(),
                             "reference_same_dtype_err": (r_ - t_).abs().max().item(),
                             "max_abs_value": t_.abs().max().item()})
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    args = p.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = measure(args.tokens, device)
    lines = [f"# Kernel parity: max |kernel - fp32 reference| ({device}, {args.tokens} tokens, model shapes)", "",
             "| op | tensor | dtype | kernel error | reference in same dtype | max value |", "|---|---|---|---:|---:|---:|"]
    lines += [f"| {r['op']} | {r['tensor']} | {r['dtype']} | {r['max_abs_err']:.2e} | "
              f"{r['reference_same_dtype_err']:.2e} | {r['max_abs_value']:.3g} |" for r in rows]
    md = "\n".join(lines) + "\n"
    write_results(args.out, f"parity_{device}", {"md": md, "json": json.dumps(rows, indent=1)})
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
