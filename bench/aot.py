"""Compile every Triton kernel ahead of time for real GPUs, no GPU needed: sm_86 (A10G) and sm_90
(H100), at the model's shapes and dtypes. Reports registers, local memory (spills), shared
memory and stack per kernel (from the cubin, via the cuobjdump that ships with Triton); exits 1 if
any kernel fails to compile or spills. It runs on the host's CPU: the rows' device is the CPU.

    TRITON_INTERPRET=0 python -m bench.aot            # writes bench/results/aot_cpu.{jsonl,md}
"""

import os
import re
import subprocess
import sys
import tempfile

os.environ["TRITON_INTERPRET"] = "0"  # AOT needs real @triton.jit functions, not interpreted ones

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from bench.results import RESULTS_DIR, Row, cli, headlines_md, provenance_md, publish, stamp  # noqa: E402
from smollm.kernels import cross_entropy, rmsnorm, rope, swiglu  # noqa: E402
from smollm.config import get_preset  # noqa: E402

TARGETS = {"sm_86 (A10G)": GPUTarget("cuda", 86, 32), "sm_90 (H100)": GPUTarget("cuda", 90, 32)}
MODEL = get_preset("smollm2-135m")


def kernel_specs():
    """(name, jit function, signature, constexprs, num_warps), as the launchers call them."""
    specs = []
    for dt in ("fp32", "bf16"):
        p = f"*{dt}"
        block = triton.next_power_of_2(MODEL.hidden_size)
        # (name, x, delta, residual, y / dy, d_delta): rms_norm and add_rms_norm all in dt, and under bf16
        # autocast the model's case: an fp32 residual stream, a bf16 branch, y written in bf16.
        norms = [("rms_norm", p, None, p, p, None), ("add_rms_norm", p, p, p, p, None)]
        if dt == "bf16":
            norms.append(("add_rms_norm+autocast", "*fp32", p, "*fp32", p, p))
        for name, x, delta, res, y, ddelta in norms:
            specs.append((f"{name.replace('norm', 'norm_fwd', 1)}[{dt}]", rmsnorm._rms_norm_fwd,
                          {"X": x, "DELTA": delta or x, "RES": res if delta else x, "W": "*fp32", "Y": y,
                           "RSTD": "*fp32", "stride_x": "i32", "stride_delta": "i32", "stride_res": "i32",
                           "stride_y": "i32", "D": "i32", "eps": "fp32", "HAS_DELTA": "constexpr",
                           "BLOCK": "constexpr"}, {"HAS_DELTA": delta is not None, "BLOCK": block}, 4))
            specs.append((f"{name.replace('norm', 'norm_bwd', 1)}[{dt}]", rmsnorm._rms_norm_bwd,
                          {"DY": y, "DRES": res, "RES": res, "W": "*fp32", "RSTD": "*fp32", "DX": x,
                           "DDELTA": ddelta or x, "DW_PART": "*fp32", "stride_dy": "i32", "stride_dres": "i32",
                           "stride_res": "i32", "stride_dx": "i32", "stride_ddelta": "i32", "N": "i32", "D": "i32",
                           "rows_per_program": "i32", "HAS_DRES": "constexpr", "HAS_DDELTA": "constexpr",
                           "BLOCK": "constexpr"},
                          {"HAS_DRES": delta is not None, "HAS_DDELTA": ddelta is not None, "BLOCK": block}, 4))
        for backward in (False, True):
            ints = ["qb", "qt", "qh", "kb", "kt", "kh", "qob", "qot", "qoh", "kob", "kot", "koh", "cos_b", "cos_t",
                    "T", "HQ", "HKV"]
            sig = {"Q": p, "K": p, "QO": p, "KO": p, "COS": "*fp32", "SIN": "*fp32", **{k: "i32" for k in ints},
                   "HALF": "constexpr", "BLOCK_HQ": "constexpr", "BLOCK_HKV": "constexpr", "BACKWARD": "constexpr"}
            specs.append((f"rope_{'bwd' if backward else 'fwd'}[{dt}]", rope._rope_kernel, sig,
                          {"HALF": MODEL.head_dim // 2, "BLOCK_HQ": triton.next_power_of_2(MODEL.num_attention_heads),
                           "BLOCK_HKV": triton.next_power_of_2(MODEL.num_key_value_heads), "BACKWARD": backward}, 1))
        sw_block = swiglu._grid(1, MODEL.intermediate_size)[1]  # programs of (row, column block)
        specs.append((f"swiglu_fwd[{dt}]", swiglu._swiglu_fwd,
                      {"G": p, "U": p, "Y": p, "stride_g": "i32", "stride_u": "i32", "stride_y": "i32",
                       "n_cols": "i32", "BLOCK": "constexpr"}, {"BLOCK": sw_block}, 4))
        specs.append((f"swiglu_bwd[{dt}]", swiglu._swiglu_bwd,
                      {"DY": p, "G": p, "U": p, "DG": p, "DU": p, "stride_dy": "i32", "stride_g": "i32",
                       "stride_u": "i32", "stride_dg": "i32", "stride_du": "i32", "n_cols": "i32",
                       "BLOCK": "constexpr"}, {"BLOCK": sw_block}, 4))
        for grad in (False, True):
            specs.append((f"cross_entropy_rows{'+grad' if grad else ''}[{dt}]", cross_entropy._ce_rows,
                          {"LOGITS": p, "stride": "i32", "TARGETS": "*i64", "LOSS": "*fp32", "N_VALID": "*i64",
                           "V": "i32", "ignore_index": "i32", "COMPUTE_GRAD": "constexpr", "BLOCK_V": "constexpr"},
                          {"COMPUTE_GRAD": grad, "BLOCK_V": cross_entropy.BLOCK_V}, 8))
    return specs


def resource_usage(cubin: bytes) -> dict:
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True, check=True).stdout
    usage = dict(re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", out))
    return {k.lower(): int(v) for k, v in usage.items()}


def compile_all(st) -> list[Row]:
    rows = []
    for name, fn, signature, constexprs, num_warps in kernel_specs():
        for target_name, target in TARGETS.items():
            params = {"kernel": name, "function": fn.__name__, "target": target_name, "num_warps": num_warps}
            try:
                compiled = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs), target=target,
                                          options={"num_warps": num_warps})
                usage = resource_usage(compiled.asm["cubin"])
                usage["shared"] = max(usage.get("shared", 0), compiled.metadata.shared)
                rows.append(st.row(params, usage))
            except Exception as e:  # report every failure, not just the first
                rows.append(st.row(params, status="error",
                                   reason=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"))
    return rows


def failures(rows: list[Row]) -> list[str]:
    return [f"{r.parameters['kernel']} {r.parameters['target']}: "
            + (r.reason or f"spills {r.metrics['local']} bytes to local memory")
            for r in rows if not r.is_summary and (r.status != "ok" or r.metrics.get("local", 0) > 0)]


def headlines(rows: list[Row]) -> list[str]:
    kernels = {r.parameters["kernel"] for r in rows}
    targets = list(dict.fromkeys(r.parameters["target"] for r in rows))
    bad = failures(rows)
    if bad:
        return [f"{len(bad)} of {len(rows)} compiles failed or spilled: " + "; ".join(bad)]
    return [f"all {len(kernels)} kernel variants compile for {' and '.join(targets)}: 0 bytes spilled, "
            f"<= {max(r.metrics.get('reg', 0) for r in rows)} registers"]


def to_markdown(rows: list[Row]) -> str:
    """The run's rows (its summary row last) as the resource table."""
    summary = rows[-1]
    lines = [f"# Ahead-of-time compile (Triton {summary.versions.get('triton')}, no GPU)", "", provenance_md(summary),
             ""]
    lines += headlines_md(rows)
    lines += ["| kernel | target | warps | registers | spills (local bytes) | shared bytes | stack | ok |",
              "|---|---|---:|---:|---:|---:|---:|---|"]
    for r in rows[:-1]:
        p, m = r.parameters, r.metrics
        if r.status == "ok":
            lines.append(f"| {p['kernel']} | {p['target']} | {p['num_warps']} | {m.get('reg', '?')} | "
                         f"{m.get('local', '?')} | {m.get('shared', '?')} | {m.get('stack', '?')} | yes |")
        else:
            lines.append(f"| {p['kernel']} | {p['target']} | {p['num_warps']} | | | | | **{r.reason}** |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = cli(__doc__)
    p.add_argument("--out", default=RESULTS_DIR)
    args = p.parse_args(argv)
    st = stamp("aot", "cpu")
    rows = compile_all(st)
    rows.append(st.summary(headlines(rows), targets=list(TARGETS)))
    return publish(args.out, rows, to_markdown(rows), failures(rows))


if __name__ == "__main__":
    sys.exit(main())
