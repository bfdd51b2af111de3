"""The GPU check's rendering, from the rows alone (flat dicts, as Recorder keeps them): the Markdown (headlines,
then a table per section), the headlines themselves, and a row's console line. It runs nothing."""

from __future__ import annotations

from bench import kernels as BK
from bench.gpu_check.plan import EXTRA_OPS, OPS, OUR_FAMILIES, SECTIONS, TRAIN_ROWS
from bench.results import Stamp


def console(row: dict) -> str:
    if row["status"] == "skipped":
        return f"skipped: {row['reason']}"
    if row["status"] == "error":
        return f"ERROR {row['reason']}"
    keys = ("tflop_s", "gb_s", "tokens_per_s", "mfu_nominal", "mfu_measured", "loss", "ms", "total_ms", "summary",
            "max_abs_err", "probe_ok", "fallback_extra_ms_per_step")
    return ", ".join(f"{k} {row[k]:.4g}" if isinstance(row[k], float) else f"{k} {row[k]}"
                     for k in keys if row.get(k) is not None) or "ok"


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


def render_md(rows: list[dict], st: Stamp, meta: dict, budget, final: bool) -> str:
    """The whole Markdown of a run; `budget`: the run's runner.Budget (its seconds, and used()), passed in, so
    that the rendering imports nothing of the runner that calls it."""
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
