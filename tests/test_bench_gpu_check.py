"""bench/gpu_check/, the GPU check, run on the CPU: every branch that does not need a GPU runs here, end
to end, at tiny sizes (one layer of the tiny preset, 2 x 32 tokens, one timed step). Its record is
bench/results' convention: gpu_check_<device-slug>.jsonl of Rows, the summary row last, and a .md."""

import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # `pytest` (not `python -m pytest`) puts tests/ first, not the repository
    sys.path.insert(0, ROOT)

from bench import results  # noqa: E402
from bench.gpu_check import cli, plan, profiling, render, runner  # noqa: E402
from bench.gpu_check import ops as ops_section  # noqa: E402
from conftest import file_tree  # noqa: E402

TINY = ["--preset", "tiny", "--layers", "1", "--batch", "2", "--seq", "32", "--steps", "1", "--warmup", "1",
        "--gemm-n", "256", "--copy-mib", "8", "--op-tokens", "256"]
STAMP = ("commit", "device", "torch", "triton", "time")
HEAVY = ("datasets", "gguf", "gradio", "liger_kernel", "matplotlib")


def run_script(out, *args, timeout=900):
    env = {**os.environ, "PYTHONPATH": ROOT}
    return subprocess.run([sys.executable, "-m", "bench.gpu_check", "--out", str(out), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def read_record(out):
    """The run's Rows (the summary row last, and only there) and its Markdown."""
    (path,) = [p for p in out.iterdir() if p.suffix == ".jsonl"]
    assert path.name == f"gpu_check_{results.device_slug(results.device_name('cpu'))}.jsonl"
    rows = results.read_rows(str(path))
    assert rows[-1].is_summary and not any(r.is_summary for r in rows[:-1])
    assert all(r.benchmark == "gpu_check" for r in rows)
    return rows, path.with_suffix(".md").read_text()


def read_rows(out):
    """The measured rows, flat (parameters, metrics, status, reason and the stamp in one dict), and the Markdown."""
    rows, md = read_record(out)
    return [{**r.flat(), "commit": r.commit, "device": r.device, "time": r.time, **r.versions} for r in rows[:-1]], md


def test_check_end_to_end_on_cpu(tmp_path):
    # a b c d: the ceilings, the three compiled training steps, the profile, two ops (one bandwidth-bound,
    # one GEMM-bound: the cross-entropy headline); (e) has its own tests below.
    proc = run_script(tmp_path, *TINY, "--budget-s", "3000", "--ops", "rmsnorm", "ce", "--sections", "a", "b", "c", "d")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows, md = read_rows(tmp_path)
    assert {r["section"] for r in rows} == {"a", "b", "c", "d"}
    for r in rows:
        assert all(r.get(k) for k in STAMP), r
        assert r["device"].startswith("cpu (")
        assert r["status"] in ("ok", "skipped"), r
    for sec, title in plan.SECTIONS.items():
        assert (f"## ({sec}) {title}" in md) == (sec != "e")
    assert "## Headlines" in md and "**error**" not in md

    gemm, copy = [r for r in rows if r["section"] == "a"]
    assert gemm["status"] == copy["status"] == "ok" and gemm["tflop_s"] > 0 and copy["gb_s"] > 0

    train = {r["name"]: r for r in rows if r["section"] == "b"}
    assert list(train) == [name for name, _, _ in plan.TRAIN_ROWS]
    tri = train["ours, triton path, compiled"]
    assert tri["status"] == "ok" and math.isfinite(tri["loss"]) and tri["note"].startswith("CPU")
    assert tri["tokens_per_s"] > 0 and tri["mfu_measured"] > 0 and tri["mfu_nominal"] is None
    assert all(r["status"] == "ok" for r in train.values())  # transformers is a dev dependency here
    assert "triton / torch path (compiled)" in md

    (prof,) = [r for r in rows if r["section"] == "c"]
    assert prof["status"] == "ok" and prof["model"].startswith("the compiled triton-path model")
    for family in plan.OUR_FAMILIES:
        assert prof["families"][family]["ms"] > 0, prof["families"]
    assert abs(sum(f["share"] for f in prof["families"].values()) - 1) < 1e-6
    assert len(prof["top"]) == 15 and "cross-entropy (ours)" in md

    ops = {(r["op"], r["impl"]): r for r in rows if r["section"] == "d"}
    assert set(ops) == {(op, impl) for op in ("rmsnorm", "ce") for impl in ("eager", "compiled", "triton", "liger")}
    for op in ("rmsnorm", "ce"):
        for impl in ("eager", "compiled"):
            r = ops[op, impl]
            assert r["status"] == "ok" and r["gb_s"] > 0 and r["copy_share"] > 0
        assert ops[op, "triton"]["reason"].startswith("CPU: interpreter")
    assert "of the measured copy bandwidth" in md and "3 GEMMs' time at the measured GEMM rate" in md

    summary = read_record(tmp_path)[0][-1]
    assert summary.metrics["rows"] == len(rows) and summary.metrics["errors"] == 0
    assert summary.headlines == render.headlines(rows) and all(f"- {h}" in md for h in summary.headlines)


def test_failing_row_is_recorded_and_the_rest_runs(tmp_path, monkeypatch):
    # An op that does not exist fails while its inputs are built; the op after it and section (e) still
    # run. pytest "missing" (as on a bare GPU machine): (e) falls back to bench/parity.py in-process.
    # (c) without (b): the profile builds its own eager triton-path model.
    monkeypatch.setattr(runner, "installed", lambda module: module not in ("pytest", "liger_kernel"))
    extra = [op for op in plan.EXTRA_OPS if hasattr(ops_section.K, op)][:1] or ["rmsnorm"]
    code = cli.main(["--out", str(tmp_path), "--sections", "e", "d", "c", "--ops", "bogus", *extra, *TINY,
                     "--op-tokens", "64", "--parity-tokens", "16", "--budget-s", "3000"])
    assert code == 1
    rows, md = read_rows(tmp_path)
    order = [r["section"] for r in rows]
    assert order == sorted(order, key="edc".index) and order[-1] == "c"  # sections run in the flag's order
    (prof,) = [r for r in rows if r["section"] == "c"]
    assert prof["status"] == "ok" and prof["model"].startswith("an eager triton-path model")
    assert all(prof["families"][f]["ms"] > 0 for f in plan.OUR_FAMILIES)
    (bad,) = [r for r in rows if r["status"] == "error"]
    assert bad["name"] == "bogus" and bad["reason"].startswith("ValueError: unknown op 'bogus'") and bad["traceback"]
    after = [r for r in rows if r["section"] == "d" and r.get("op") == extra[0]]
    assert [r["impl"] for r in after] == ["eager", "compiled", "triton", "liger"]
    assert after[0]["status"] == after[1]["status"] == "ok"
    probe, *parity = [r for r in rows if r["section"] == "e"]
    assert probe["name"] == "fp32-output GEMM probe" and probe["status"] == "ok" and probe["probe_ok"] is False
    assert probe["note"].startswith("CPU") and probe["fallback_ms"] > 0 and probe["bf16_gemm_ms"] > 0
    assert probe["chunks_per_step"] == 1 and probe["chunk_rows"] == 2 * 32
    assert "unavailable (CPU): training uses the fallback" in md and "probe" not in " ".join(render.headlines(rows))
    assert parity[0]["status"] == "skipped" and parity[0]["reason"].startswith("pytest not installed")
    errs = {r["name"]: r["max_abs_err"] for r in parity if "max_abs_err" in r}
    ops = ("rms_norm", "add_rms_norm", "rope", "swiglu", "swiglu_packed", "linear_cross_entropy")  # every kernel
    assert set(errs) == {f"{op} {dt}" for op in ops for dt in ("float32", "bfloat16")}
    assert all(0 <= e < 1 for e in errs.values()), errs
    assert "**error**: ValueError" in md and "1 row(s) failed" in md


def test_parity_tests_run_under_pytest(tmp_path):
    tests = tmp_path / "parity_tests"
    tests.mkdir()
    (tests / "test_pass.py").write_text("def test_a():\n    pass\n\ndef test_b():\n    pass\n")
    (tests / "test_fail.py").write_text("def test_c():\n    assert 1 == 2\n")
    args = ["--sections", "e", "--parity", "pytest", "--budget-s", "300"]
    assert cli.main(["--out", str(tmp_path / "ok"), *args, "--parity-tests", str(tests / "test_pass.py")]) == 0
    probe, row = read_rows(tmp_path / "ok")[0]
    assert probe["name"] == "fp32-output GEMM probe"
    assert row["status"] == "ok" and row["returncode"] == 0 and "2 passed" in row["summary"]
    assert cli.main(["--out", str(tmp_path / "bad"), *args, "--parity-tests", str(tests)]) == 1
    _, row = read_rows(tmp_path / "bad")[0]
    assert row["status"] == "error" and "1 failed, 2 passed" in row["reason"]


def test_zero_budget_skips_every_row_and_still_writes(tmp_path):
    proc = run_script(tmp_path, *TINY, "--budget-s", "0", timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows, md = read_rows(tmp_path)
    order = list(dict.fromkeys(r["section"] for r in rows))
    assert order == plan.DEFAULT_ORDER and order[:2] == ["e", "b"]  # correctness, then the training rows
    assert set(order) == set(plan.SECTIONS)
    assert rows and all(r["status"] == "skipped" and r["reason"].startswith("time budget") for r in rows)
    assert all(all(r.get(k) for k in STAMP) for r in rows)
    assert md.count("skipped: time budget") == len(rows)
    for sec, title in plan.SECTIONS.items():
        assert f"## ({sec}) {title}" in md


def test_row_overrunning_the_budget_is_stopped_and_written(tmp_path):
    # The estimates scaled down so the triton-path row starts; its compile and 10^5 interpreted steps
    # run past the hard stop. The budget counts from the script's start: 15 s leave room for its
    # imports on a loaded machine (with 5 s, a slow start skipped every row before any could run).
    proc = run_script(tmp_path, *TINY, "--steps", "100000", "--sections", "b", "--budget-s", "15", "--hard-stop-s",
                      "20", "--estimate-scale", "0.01", timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows, md = read_rows(tmp_path)
    (row,) = rows
    assert row["name"] == "ours, triton path, compiled" and row["status"] == "skipped"
    assert row["reason"].startswith("time budget: hard stop at 20 s")
    assert "**Stopped at the hard stop at 20 s (budget 15 s) while running (b) ours, triton path, compiled" in md


@pytest.mark.parametrize("name,family", [
    # CUDA kernels (an H100 profile of the triton path, torch 2.x)
    ("_rms_norm_fwd", "rmsnorm"), ("_rms_norm_bwd", "rmsnorm"), ("_rope_kernel", "rope"),
    ("_swiglu_fwd", "swiglu"), ("_swiglu_bwd", "swiglu"), ("_ce_rows", "cross-entropy"),
    ("nvjet_hsh_128x256_64x4_1x2_h_bz_coopA_NTN", "GEMM"),
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1_execute_segment_k_off_kernel"
     "__5x_cublas", "GEMM"),
    ("ampere_bf16_s16816gemm_bf16_128x64_ldg8_f2f_stages_64x4_tn", "GEMM"),
    ("void cutlass::Kernel2<cutlass_80_wmma_tensorop_bf16_s161616gemm_bf16_32x32_64x1_tn_align8>(cutlass_80_wmma_"
     "tensorop_bf16_s161616gemm_bf16_32x32_64x1_tn_align8::Params)", "GEMM"),
    ("void cublasLt::splitKreduce_kernel<32, 16, int, float, __nv_bfloat16, float, __nv_bfloat16, true, false, "
     "false>(cublasLt::cublasSplitKParams<float>, float const*, __nv_bfloat16 const*)", "GEMM"),
    ("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128, 128, 4, false, false, "
     "cutlass::bfloat16_t, Flash_kernel_traits<64, 128, 128, 4, cutlass::bfloat16_t> >, false, true>"
     "(pytorch_flash::Flash_fwd_params)", "attention"),
    ("fmha_cutlassB_bf16_aligned_64x64_k64_sm80(PyTorchMemEffAttention::AttentionBackwardKernel<cutlass::arch::Sm80,"
     " cutlass::bfloat16_t, true, false, true, 64, 64, 64, false>::Params)", "attention"),
    ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_3_64x64x64_4x1x1_kernel0_0", "attention"),
    ("triton_poi_fused__to_copy_add_mul_0", "elementwise/fused"),
    ("triton_red_fused__to_copy_add_mean_mul_pow_rsqrt_1", "elementwise/fused"),
    ("triton_per_fused_add_embedding_dense_backward_2", "elementwise/fused"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>, std::array<char*, 1ul> >"
     "(int, at::native::FillFunctor<float>, std::array<char*, 1ul>)", "elementwise/fused"),
    ("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<at::native::(anonymous namespace)::"
     "FusedOptimizerTensorListMetadata<4>, at::native::(anonymous namespace)::FusedAdamMathFunctor<float, 4, "
     "(at::native::ADAM_MODE)1, false>, double*, double, double, double, double, double, bool, float*, float*>"
     "(at::native::(anonymous namespace)::FusedOptimizerTensorListMetadata<4>, ...)", "optimizer"),
    ("Memcpy DtoD (Device -> Device)", "other"),
    # CPU operators (self CPU time, this machine's profile of the triton path)
    ("smollm::rms_norm_fwd", "rmsnorm"), ("smollm::add_rms_norm_fwd", "rmsnorm"), ("smollm::rope", "rope"),
    ("smollm::swiglu_packed_bwd", "swiglu"), ("smollm::linear_cross_entropy", "cross-entropy"),
    ("aten::mm", "GEMM"), ("aten::addmm_", "GEMM"), ("aten::bmm", "GEMM"), ("mkldnn::_linear_pointwise", "GEMM"),
    ("aten::_scaled_dot_product_flash_attention_for_cpu_backward", "attention"),
    ("aten::_fused_adamw_", "optimizer"), ("Optimizer.step#AdamW.step", "optimizer"),
    ("## Call CompiledFxGraph favcskcq4av7blx2gf6knjewrfimz52ysysl3zupdhb3a274ouqy ##", "elementwise/fused"),
    ("cudaGetDeviceProperties", "other"),  # "rope" inside a word is not RoPE
    ("aten::fill_", "other"), ("aten::copy_", "other"),
])
def test_op_family(name, family):
    assert profiling.op_family(name) == family


def test_summarize_profile():
    s = profiling.summarize_profile([("aten::mm", 600.0, 3), ("_rope_kernel", 300.0, 2), ("aten::fill_", 100.0, 1)],
                                    top=2)
    assert s["total_ms"] == 1.0
    assert [t["name"] for t in s["top"]] == ["aten::mm", "_rope_kernel"] and s["top"][0]["share"] == 0.6
    assert s["families"] == {"GEMM": {"ms": 0.6, "share": 0.6}, "rope": {"ms": 0.3, "share": 0.3},
                             "other": {"ms": 0.1, "share": 0.1}}


@pytest.mark.parametrize("name,slug", [
    ("cpu (2 cores)", "cpu"), ("NVIDIA A10G", "a10g"), ("NVIDIA H100 80GB HBM3", "h100"), ("NVIDIA H200", "h200"),
    ("NVIDIA A100-SXM4-80GB", "a100"), ("NVIDIA H100 PCIe", "h100"), ("NVIDIA GeForce RTX 4090", "rtx-4090"),
    ("Tesla T4", "t4"),
])
def test_results_file_names_the_device_by_its_model(name, slug):
    assert results.device_slug(name) == slug
    assert results.results_path("out", "gpu_check", name, "jsonl") == os.path.join("out", f"gpu_check_{slug}.jsonl")


def test_publish_ends_a_benchmark(tmp_path, capsys):
    # Every main() that writes its record at the end ends here: the rows and the Markdown written, the Markdown
    # printed, what failed on stderr (unless the Markdown lists it already), exit 1 if anything failed.
    st = results.Stamp("demo", "cpu (2 cores)", "abc1234", {"torch": "t", "triton": "tr", "python": "p"})
    rows = [st.row({"op": "x"}, {"ms": 1.0}), st.summary(["a headline"])]
    assert results.publish(str(tmp_path / "ok"), rows, "# demo\n") == 0
    assert capsys.readouterr() == ("# demo\n\n", "")
    written = results.read_rows(str(tmp_path / "ok" / "demo_cpu.jsonl"))
    assert [r.to_json() for r in written] == [r.to_json() for r in rows]
    assert (tmp_path / "ok" / "demo_cpu.md").read_text() == "# demo\n"
    assert results.publish(str(tmp_path / "bad"), rows, "# demo", iter(["x spilled", "y failed"])) == 1
    assert capsys.readouterr() == ("# demo\n", "FAIL x spilled\nFAIL y failed\n")
    assert results.publish(str(tmp_path / "bad"), rows, "# demo", ["z"], echo_failures=False) == 1
    assert capsys.readouterr() == ("# demo\n", "")


def test_import_pulls_in_no_heavy_module():
    # Every module of the package (cli imports the rest); the package alone imports not even torch, so that
    # its START, the budget's beginning, comes before the imports as it did when the check was one file.
    code = ("import sys, bench.gpu_check as g; bare = 'torch' in sys.modules; import importlib, pkgutil; "
            "[importlib.import_module('bench.gpu_check.' + m.name) for m in pkgutil.iter_modules(g.__path__)]; "
            f"print(bare, sorted(sys.modules.keys() & {{*{HEAVY!r}}}), 'bench.gpu_check.cli' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "False [] True"


def test_gpu_defaults():
    a = cli.parse_args([], gpu=True)
    assert (a.gemm_n, a.copy_mib, a.preset, a.batch, a.seq, a.steps, a.op_tokens, a.budget_s) == (
        8192, 1024, "smollm2-135m", 16, 1024, 10, 16384, 450.0)
    assert a.sections == plan.DEFAULT_ORDER and a.ops is None and a.parity == "auto"


def test_profiled_times_gpu_branch_reads_real_profiler_fields():
    # The CUDA branch cannot run here; the fields it reads must exist on the profiler's own events.
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        torch.ones(64, 64) @ torch.ones(64, 64)
    events = prof.key_averages()
    assert all(isinstance(e.self_device_time_total, (int, float)) and e.device_type == DeviceType.CPU for e in events)
    assert profiling.profiled_times(prof, torch.device("cuda")) == []
    assert any(name == "aten::mm" for name, _, _ in profiling.profiled_times(prof, torch.device("cpu")))


def test_markdown_of_gpu_rows():
    # What an H100 run's rows look like (made up numbers), through the same rendering as a real run.
    st = results.Stamp("gpu_check", "NVIDIA H100 80GB HBM3", "abc1234",
                       {"torch": "2.11.0", "triton": "3.6.0", "python": "3.12.3"})
    tri = {"tokens_per_s": 500_000.0, "mfu_nominal": 0.41, "mfu_measured": 0.55, "first_step_s": 80.0,
           "warmup_s": 84.0, "warmup_steps": 3, "step_ms": 33.0, "peak_mib": 20_000.0, "loss": 10.9, "seconds": 90.0}
    rows = [
        {"section": "a", "name": "bfloat16 GEMM 8192^3", "status": "ok", "ms": 1.5, "tflop_s": 733.0,
         "nominal_tflop_s": 989.0, "fraction_of_nominal": 0.74},
        {"section": "a", "name": "device copy 1024 MiB", "status": "ok", "ms": 0.7, "gb_s": 3000.0,
         "nominal_gb_s": 3350.0, "fraction_of_nominal": 0.9},
        {"section": "b", "name": "ours, triton path, compiled", "status": "ok", "preset": "smollm2-135m", "layers": 30,
         "batch": 16, "seq": 1024, "precision": "bf16 autocast", "optimizer": "AdamW(fused=True)", **tri},
        {"section": "b", "name": "ours, torch path, compiled", "status": "ok", **tri, "tokens_per_s": 400_000.0},
        {"section": "b", "name": "transformers, compiled", "status": "error", "reason": "OutOfMemoryError: CUDA out"},
        {"section": "c", "name": "one triton-path step", "status": "ok", "model": "the compiled triton-path model",
         "metric": "CUDA kernel time", "tokens": 16384, **profiling.summarize_profile(
             [("nvjet_hsh_128x256", 20_000.0, 300), ("_ce_rows", 3000.0, 8), ("_rope_kernel", 1000.0, 60)])},
        {"section": "d", "name": "ce, triton", "status": "ok", "op": "ce", "impl": "triton", "tokens": 16384,
         "ms": 2.0, "gb_s": 60.0, "copy_share": 0.02},
        {"section": "d", "name": "rmsnorm, liger", "status": "skipped", "op": "rmsnorm", "impl": "liger",
         "tokens": 16384, "reason": "liger-kernel is not installed"},
        {"section": "e", "name": "parity tests (pytest)", "status": "ok", "summary": "120 passed in 61.00s",
         "deselected": None},
    ]
    budget = runner.Budget(450, 0.0)
    md = render.render_md(rows, st, {"started": "t", "sections": list(plan.SECTIONS), "cpu": False}, budget,
                          final=True)
    assert "No GPU" not in md and "# GPU check: NVIDIA H100 80GB HBM3" in md
    heads = render.headlines(rows)
    assert "bfloat16 GEMM 8192^3: 733 TFLOP/s = 74% of the nominal 989" in heads
    assert "device copy 1024 MiB: 3,000 GB/s (read + written) = 90% of the nominal 3,350" in heads
    assert "training step: triton path 1.25x the torch path (both compiled)" in heads
    assert any(h.startswith("ours, triton path, compiled: 500,000 tokens/s, MFU 41.0% of the nominal peak, 55.0%")
               for h in heads)
    gemm_ms = 3 * 2 * 16384 * 576 * 49152 / 733e12 * 1e3
    assert f"= {2.0 / gemm_ms:.2f}x its 3 GEMMs' time" in "\n".join(heads)
    assert "kernel parity tests on this device: 120 passed in 61.00s" in heads
    assert "**1 row(s) failed**: (b) transformers, compiled" in heads
    assert "| ours, triton path, compiled | 80.0 / 84.0 (3) | 33.0 | 500,000 | 41.0% | 55.0% | 20,000 | 10.900 | 90 |" in md
    assert "| rmsnorm | liger | skipped: liger-kernel is not installed |" in md


def test_ceilings_measured_after_the_rows_that_use_them():
    # The default order runs (b) and (d) before (a): their shares of (a)'s rates are filled in afterwards.
    rows = [{"section": "b", "name": "ours, triton path, compiled", "status": "ok", "model_tflop_s": 200.0,
             "mfu_measured": None},
            {"section": "d", "name": "ce, triton", "status": "ok", "gb_s": 600.0, "copy_share": None},
            {"section": "a", "name": "bfloat16 GEMM 8192^3", "status": "ok", "tflop_s": 800.0},
            {"section": "a", "name": "device copy 1024 MiB", "status": "ok", "gb_s": 4000.0}]
    b, d, *_ = render.with_ceilings(rows)
    assert b["mfu_measured"] == 0.25 and d["copy_share"] == 0.15
    assert rows[0]["mfu_measured"] is None  # the record's rows are left as measured
    assert render.with_ceilings(rows[:2]) == rows[:2]  # no (a): nothing to fill in


def test_a_failed_probe_on_a_gpu_is_a_headline_with_its_cost():
    row = {"section": "e", "name": "fp32-output GEMM probe", "status": "ok", "probe_ok": False, "chunk_rows": 4096,
           "chunks_per_step": 4, "vocab": 49152, "bf16_gemm_ms": 0.5, "fallback_ms": 0.9,
           "fallback_extra_ms_per_step": 1.6, "uses": "the fallback (bf16 product + fp32 add)"}
    (head,) = render.headlines([row])
    assert head == ("fp32-output GEMM probe FAILED: training uses the fallback (bf16 product + fp32 add); per chunk "
                    "fallback 0.900 ms, bare bf16 GEMM 0.500 ms; the fallback costs 1.60 ms per step (4 chunks)")
    assert render.headlines([{**row, "probe_ok": True, "fp32_out_ms": 0.5,
                            "uses": "the fp32-output GEMM"}]) == []  # working as it should: no headline


# ------------------------------------------------------------------------------ bench/gpu.sh --

def run_gpu_sh(out, *args):
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run(["bash", os.path.join(ROOT, "bench", "gpu.sh"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)


def test_gpu_sh_without_a_gpu_refuses_and_leaves_nothing(tmp_path):
    proc = run_gpu_sh(tmp_path / "new")  # a folder it would have made
    assert proc.returncode == 2 and "GPU" in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    assert not (tmp_path / "new").exists()
    earlier = tmp_path / "earlier"  # an earlier run's results: a refused start changes none of them
    earlier.mkdir()
    (earlier / "gpu_check.log").write_text("the earlier run's console\n")
    assert run_gpu_sh(earlier).returncode == 2
    assert file_tree(earlier) == {"gpu_check.log": b"the earlier run's console\n"}


def test_gpu_sh_cpu_smoke_writes_rows_and_its_log(tmp_path):
    # The wrapper's path, with (e) asked for first: its probe row, then the parity tests (a stand-in file, so
    # this stays quick; the real ones run in CI on their own), then (a). The rows are tested above.
    tests = tmp_path / "stand_in"
    tests.mkdir()
    (tests / "test_pass.py").write_text("def test_a():\n    pass\n")
    out = tmp_path / "out"
    proc = run_gpu_sh(out, "--cpu-smoke", "--sections", "e", "a", "--parity", "pytest", "--parity-tests", str(tests))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows, _ = read_rows(out)
    assert [(r["section"], r["name"]) for r in rows] == [
        ("e", "fp32-output GEMM probe"), ("e", "parity tests (pytest)"), ("a", "float32 GEMM 256^3"),
        ("a", "device copy 8 MiB")]
    assert all(r["status"] == "ok" for r in rows) and rows[0]["probe_ok"] is False and "1 passed" in rows[1]["summary"]
    tmp_path = out
    log = (tmp_path / "gpu_check.log").read_text()
    assert not (tmp_path / "gpu_check.log.partial").exists() and "bench/gpu.sh: check done" in proc.stdout
    assert "GEMM" in log or "gemm" in log, log[-2000:]


def test_rows_name_the_commit_they_were_given(monkeypatch):
    # A copy of the tree run on a lent machine carries no .git of its own (or a stale one): the README's
    # device line passes the commit, and that wins over whatever git says there.
    monkeypatch.setenv("SMOLLM_COMMIT", "abc1234")
    assert results.git_commit() == "abc1234"
    monkeypatch.delenv("SMOLLM_COMMIT")
    head = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    assert results.git_commit().removesuffix("-dirty") == head.stdout.strip()


def test_a_training_row_past_its_cap_costs_that_row_only(tmp_path):
    # Each training row would run 10^5 interpreted steps (a stand-in for the compile that hung on the H200);
    # the cap stops each after 3 s as an error row, and the next row still starts.
    code = cli.main(["--out", str(tmp_path), *TINY, "--steps", "100000", "--sections", "b", "a",
                     "--row-cap-s", "3", "--budget-s", "3000"])
    assert code == 1
    rows, md = read_rows(tmp_path)
    train = [r for r in rows if r["section"] == "b"]
    assert [r["name"] for r in train] == [name for name, _, _ in plan.TRAIN_ROWS]
    assert all(r["status"] == "error" and r["reason"] == "RowCap: stopped at its cap of 3 s" for r in train), train
    assert all(3 <= r["seconds"] < 60 for r in train)
    assert [r["status"] for r in rows if r["section"] == "a"] == ["ok", "ok"]  # the rows after them ran


def test_the_cap_leaves_an_earlier_alarm_as_it_was():
    # pytest-timeout (this suite's per-test timeout) arms SIGALRM too: its handler and deadline survive.
    import signal

    handler, (delay, _) = signal.getsignal(signal.SIGALRM), signal.getitimer(signal.ITIMER_REAL)
    with runner.capped(5):
        pass
    with pytest.raises(runner.RowCap):
        with runner.capped(0.2):
            while True:
                pass
    assert signal.getsignal(signal.SIGALRM) is handler
    left, _ = signal.getitimer(signal.ITIMER_REAL)
    assert (left == 0) if delay == 0 else (0 < left <= delay)
