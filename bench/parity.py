"""Max errors of every Triton kernel (forward and each gradient) against the fp32 reference on the
same inputs, at the model's shapes, in fp32 and bf16; beside each bf16 figure, the error of PyTorch's
own bf16 run of the reference (what bf16 rounding costs anyway). On a CPU the kernels run in
Triton's interpreter; on a GPU, compiled.

    python -m bench.parity [--tokens 256]     # writes bench/results/parity_<device-slug>.{jsonl,md}
"""

import sys

import torch

from smollm import kernels as K
from bench.results import RESULTS_DIR, Row, cli, headlines_md, provenance_md, publish, stamp
from smollm.config import get_preset

MODEL = get_preset("smollm2-135m")


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

    D, F, V = MODEL.hidden_size, MODEL.intermediate_size, MODEL.vocab_size
    HQ, HKV, DH = MODEL.num_attention_heads, MODEL.num_key_value_heads, MODEL.head_dim
    B, T = 2, tokens // 2
    cos, sin = K.rope.rope_tables(DH, MODEL.max_position_embeddings, MODEL.rope_theta)
    cos, sin = cos[:T].to(device), sin[:T].to(device)
    targets = torch.randint(0, V, (tokens,), generator=g).to(device)
    targets[::7] = -100
    return [
        ("rms_norm", ["y", "dx", "dw"], lambda x, w: K.rmsnorm.rms_norm(x, w),
         lambda x, w: K.rmsnorm.rms_norm_reference(x, w), [rand(tokens, D), 1 + rand(D, scale=0.1)], [rand(tokens, D)]),
        ("add_rms_norm", ["residual", "y", "dx", "d_delta", "dw"], lambda x, d, w: K.rmsnorm.add_rms_norm(x, d, w),
         lambda x, d, w: K.rmsnorm.add_rms_norm_reference(x, d, w),
         [rand(tokens, D), rand(tokens, D), 1 + rand(D, scale=0.1)], [rand(tokens, D), rand(tokens, D)]),
        ("rope", ["q", "k", "dq", "dk"], lambda q, k: K.rope.rope(q, k, cos, sin),
         lambda q, k: K.rope.rope_reference(q, k, cos, sin),
         [rand(B, T, HQ, DH), rand(B, T, HKV, DH)], [rand(B, T, HQ, DH), rand(B, T, HKV, DH)]),
        ("swiglu", ["y", "d_gate", "d_up"], K.swiglu.swiglu, K.swiglu.swiglu_reference,
         [rand(tokens, F, scale=3), rand(tokens, F)], [rand(tokens, F)]),
        ("swiglu_packed", ["y", "d_gate_up"], K.swiglu.swiglu_packed, K.swiglu.swiglu_packed_reference,
         [torch.cat([rand(tokens, F, scale=3), rand(tokens, F)], dim=-1)], [rand(tokens, F)]),
        ("linear_cross_entropy", ["loss", "d_hidden", "d_weight"],
         lambda h, w: K.cross_entropy.linear_cross_entropy(h, w, targets),
         lambda h, w: K.cross_entropy.linear_cross_entropy_reference(h, w, targets),
         [rand(tokens, D), rand(V, D, scale=D ** -0.5)], [torch.ones((), device=device)]),
    ]


def measure(tokens: int, device: str) -> list[dict]:
    """One dict per (op, dtype, tensor): its labels and errors (bench/gpu_check/parity.py reads these too)."""
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


METRICS = ("max_abs_err", "reference_same_dtype_err", "max_abs_value")


def headlines(rows: list[Row]) -> list[str]:
    """Per dtype, the largest kernel error, and in bf16 the largest ratio to PyTorch's own bf16 error."""
    out = []
    for dtype in dict.fromkeys(r.parameters["dtype"] for r in rows):
        rs = [r for r in rows if r.parameters["dtype"] == dtype]
        worst = max(rs, key=lambda r: r.metrics["max_abs_err"])
        out.append(f"{dtype}: largest kernel error {worst.metrics['max_abs_err']:.2e} "
                   f"({worst.parameters['op']} {worst.parameters['tensor']})")
        ratios = [(r.metrics["max_abs_err"] / r.metrics["reference_same_dtype_err"], r) for r in rs
                  if r.metrics["reference_same_dtype_err"] > 0]
        if ratios:
            ratio, r = max(ratios, key=lambda x: x[0])
            out.append(f"{dtype}: kernel error at most {ratio:.2f}x PyTorch's own {dtype} run of the reference "
                       f"({r.parameters['op']} {r.parameters['tensor']})")
    return out


def to_markdown(rows: list[Row]) -> str:
    """The run's rows (its summary row last) as the error table."""
    summary = rows[-1]
    lines = [f"# Kernel parity: max |kernel - fp32 reference| ({summary.parameters['device']}, "
             f"{summary.parameters['tokens']} tokens, model shapes)", "", provenance_md(summary), ""]
    lines += headlines_md(rows)
    lines += ["| op | tensor | dtype | kernel error | reference in same dtype | max value |",
              "|---|---|---|---:|---:|---:|"]
    lines += [f"| {p['op']} | {p['tensor']} | {p['dtype']} | {m['max_abs_err']:.2e} | "
              f"{m['reference_same_dtype_err']:.2e} | {m['max_abs_value']:.3g} |"
              for p, m in ((r.parameters, r.metrics) for r in rows[:-1])]
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = cli(__doc__)
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--out", default=RESULTS_DIR)
    args = p.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    st = stamp("parity", device)
    rows = [st.row({k: r[k] for k in ("op", "tensor", "dtype")} | {"tokens": args.tokens, "device": device},
                   {k: r[k] for k in METRICS}) for r in measure(args.tokens, device)]
    rows.append(st.summary(headlines(rows), tokens=args.tokens, device=device))
    return publish(args.out, rows, to_markdown(rows))


if __name__ == "__main__":
    sys.exit(main())
