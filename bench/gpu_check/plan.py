"""What the GPU check runs: its sections and their order, the rows of (b) and the ops of (d), the time each
row is expected to take, and the sizes by device. Data only: every other module of the check reads it."""

SECTIONS = {"a": "Measured ceilings", "b": "Training step", "c": "Profile of one triton-path step",
            "d": "Ops, forward+backward", "e": "Kernel parity on this device"}
# The order they run in unless --sections gives another: correctness first (is what a GPU compiles right?),
# then the training rows (the number the project exists for), then the rest. (b)'s MFU against the measured
# GEMM rate is worked out when (a) has run, whichever came first.
DEFAULT_ORDER = ["e", "b", "c", "a", "d"]
# Our triton path first: the most valuable row, and the model (c) profiles without compiling again.
TRAIN_ROWS = [("ours, triton path, compiled", "ours", "triton"), ("ours, torch path, compiled", "ours", "torch"),
              ("transformers, compiled", "hf", None)]
OPS = ["rmsnorm", "rope", "swiglu", "ce"]
EXTRA_OPS = ["add_rms_norm", "swiglu_packed"]  # run when kernels exposes them (hasattr, at run time)
# The profile's families of our ops (profiling.FAMILY_RULES names them), marked "(ours)" in the Markdown.
OUR_FAMILIES = ("rmsnorm", "rope", "swiglu", "cross-entropy")

# Seconds each row is expected to take on an H100/H200, compiles cold: a row starts only if this fits in
# the time left. Training rows are dominated by a cold torch.compile of the whole model, forward and
# backward (the triton path has fewer inductor kernels; transformers' modeling code traces slowest);
# after the first training row the next one is expected to take as long as the previous one did (x1.3
# for transformers), so the estimate follows the machine. (c) reuses (b)'s compiled model (one step
# under the profiler); without it, an eager triton-path model. (d): a compiled reference is a small
# graph compiled forward and backward; each timed call is one do_bench. (e): the four parity test
# files compile each kernel variant once; bench/parity.py's in-process run is smaller.
ESTIMATE_S = {"gemm": 10, "copy": 5, "train": 120, "profile": 15, "profile_eager": 40, "op_eager": 3,
              "op_compiled": 20, "op_triton": 5, "op_liger": 5, "pytest": 60, "parity": 25, "probe": 5}


def defaults(gpu: bool) -> dict:
    """Sizes by device, in one place: the GPU check's on a GPU, small ones (a smoke run) on a CPU."""
    if gpu:
        return dict(gemm_n=8192, copy_mib=1024, preset="smollm2-135m", batch=16, seq=1024, steps=10, warmup=3,
                    op_tokens=16384, parity_tokens=256)
    return dict(gemm_n=512, copy_mib=64, preset="tiny", batch=2, seq=64, steps=2, warmup=2, op_tokens=1024,
                parity_tokens=16)
