"""The GPU check: what a GPU lent for a few minutes should tell us, most valuable first, in one process
under one time budget, each row written the moment it is measured (a killed run keeps every row
before the kill):

  (a) the GPU's measured ceilings: bf16 GEMM TFLOP/s (torch.mm, 8192^3) and device copy GB/s (1 GiB);
  (b) one training step (micro-batch 16 x 1024, bf16 autocast, fused AdamW), compiled: ours on the
      triton path, ours on the torch path, transformers' LlamaForCausalLM; compile + warm-up apart from
      the timed steps, tokens/s, MFU against the nominal bf16 peak and against (a)'s GEMM rate, peak memory;
  (c) torch.profiler on one triton-path step (the model compiled in (b)): the 15 most expensive kernels
      and the time per op family (GEMM, attention, each of our ops, inductor kernels, optimizer, other);
  (d) each op at 16,384 tokens, forward+backward, bf16: eager, compiled reference, ours, Liger when
      installed; ms, GB/s and the share of (a)'s copy bandwidth;
  (e) the kernel parity tests compiled on this device (pytest in a subprocess, timeout = the time left),
      or without pytest bench/parity.py's max errors in-process.

    python -m bench.gpu_check [--out DIR] [--budget-s 450] [--sections a b c d e] [--steps 10]
        [--preset P] [--layers L] [--batch B] [--seq T] [--gemm-n N] [--copy-mib M] [--op-tokens N]
        [--ops OP ...] [--parity auto|pytest|measure] [--hard-stop-s S] [--estimate-scale X] [--require-gpu]
        # writes DIR/gpu_check_<device-slug>.jsonl (one bench.results.Row per line, fsynced; the run's summary
        # row with its headlines last) and DIR/gpu_check_<device-slug>.md (re-rendered atomically after every
        # row); exit 0 when every row ran or was skipped for a stated reason, 1 if any errored

Each row runs only if its estimated time (ESTIMATE_S) fits in what is left of --budget-s (counted from
the start of this process, imports included), else it is written as "skipped: time budget". A row that
raises becomes an error row (exception, first line, last frames) and the check moves on. A row still
running at --hard-stop-s (default budget + 20 s) is written as skipped and the process exits.

Without a GPU everything runs on the CPU at whatever sizes the flags give (the defaults are small): the
triton rows run Triton's interpreter there, correct but with timings that mean nothing. bench/gpu.sh
is the wrapper the device tool runs; tests/test_bench_gpu_check.py runs this module end to end on a CPU.
Needs only torch, triton and numpy (transformers, liger-kernel, pytest are used when installed).
"""

# The package, one concern per module (none imports a module listed after it, except cli, which imports all):
#   plan.py       what the check runs: the sections, their order, the training rows, the ops, the time estimates,
#                 the sizes by device
#   render.py     the Markdown, the headlines and the console line of a row (from the rows alone)
#   runner.py     the budget, the recorder (rows to .jsonl + .md as measured), the row caps, the watchdog, Ctx
#   ceilings.py   (a)    training.py  (b)    profiling.py  (c)    ops.py  (d)    parity.py  (e)
#   cli.py        the flags, their defaults, main(): the sections in order
#   __main__.py   `python -m bench.gpu_check`, its budget counted from START below
# Importing this package imports nothing else (bench/gpu.sh's budget starts here, before torch is imported).

import time

START = time.monotonic()  # the budget counts from here
