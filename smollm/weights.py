"""Weights in (Hugging Face directory, hub id, GGUF file, a sharded checkpoint's model/) and out (a Hugging
Face directory that `transformers.AutoModelForCausalLM.from_pretrained` loads as it is; the shards of a
sharded model, torch.distributed.checkpoint's format)."""

from __future__ import annotations

import json
import os

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from smollm.config import ModelConfig
from smollm.files import SourceNotFound, atomic_dir, hub_failure, is_hub_id
from smollm.model import SmolLM, native_keys
from smollm.runs import MODEL_SHARDS

TIED_KEY = "lm_head.weight"
WEIGHTS_FILE = "model.safetensors"

# Every load of ours through transformers passes use_kernels=False. Since transformers 5.2x,
# from_pretrained defaults to use_kernels=True unless USE_HUB_KERNELS says otherwise: it swaps layers for
# kernels fetched from the Hugging Face Hub (a network access at load time, other numerics than the
# reference the parity tests compare against) and refuses to load at all when the hub-kernels package is
# missing. Set here, per call, rather than USE_HUB_KERNELS in the environment, which would change the
# user's other programs too. The argument exists since transformers 4.54 (pyproject's lower bound).
TRANSFORMERS_LOAD = {"use_kernels": False}


def transformers_model(path: str | os.PathLike, **kwargs):
    """transformers' own AutoModelForCausalLM from a local directory (or, with gguf_file=, a GGUF in it),
    never kernelized: the independent reference of the tests and benchmarks, and the export's reload."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(os.fspath(path), **TRANSFORMERS_LOAD, **kwargs)


def load_model(source: str | os.PathLike, kernels: str = "torch", dtype: torch.dtype | None = None,
               device: str | torch.device | None = None) -> SmolLM:
    """A SmolLM from a Hugging Face directory, a `.gguf` file, or a hub id (when the hub answers): the
    weights alone (smollm.sources.load also takes a run directory and brings the tokenizer)."""
    source = os.fspath(source)
    if os.path.isdir(source):
        model = load_hf_dir(source, kernels)
    elif os.path.isfile(source):
        if not source.endswith(".gguf"):
            raise ValueError(f"{source}: expected a Hugging Face model directory or a .gguf file")
        model = load_gguf(source, kernels)
    elif is_hub_id(source):
        try:
            snapshot = download_from_hub(source)
        except OSError as e:  # said after the local path it is not: a mistyped path reads as one
            raise SourceNotFound(source, hub_said=str(e)) from e
        model = load_hf_dir(snapshot, kernels)
    else:
        raise SourceNotFound(source)
    if dtype is not None or device is not None:
        model = model.to(device=device, dtype=dtype)
    return model.eval()


def download_from_hub(repo_id: str) -> str:
    """The local directory of a hub repository's weights and config (from the Hub, else its cache); an
    OSError with what the Hub said in one line (hub_failure) when offline, unknown or gated."""
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id, allow_patterns=["config.json", "*.safetensors", "*.safetensors.index.json"])
    except Exception as e:
        raise OSError(hub_failure(e)) from e


def read_safetensors(directory: str) -> dict[str, torch.Tensor]:
    """All tensors of model.safetensors, or of the shards named in model.safetensors.index.json."""
    index = os.path.join(directory, "model.safetensors.index.json")
    single = os.path.join(directory, WEIGHTS_FILE)
    if os.path.isfile(single):
        files = [single]
    elif os.path.isfile(index):
        with open(index) as f:
            files = [os.path.join(directory, name) for name in sorted(set(json.load(f)["weight_map"].values()))]
    elif os.path.isfile(os.path.join(directory, MODEL_SHARDS, SHARDS_INDEX)):
        return read_sharded(directory)
    else:
        raise FileNotFoundError(f"{directory}: no model.safetensors (or model.safetensors.index.json)")
    state = {}
    for path in files:
        try:
            with safe_open(path, framework="pt") as f:
                for key in f.keys():
                    state[key] = f.get_tensor(key)
        except Exception as e:
            why = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ValueError(f"{path}: not a readable safetensors file (truncated or corrupt? {why})") from e
    return state


SHARDS_INDEX = ".metadata"  # torch.distributed.checkpoint's index of a directory of shards


def save_shards(model: SmolLM, directory: str) -> None:
    """Every process calls it: each writes its own shards of the (FSDP-sharded) model into directory
    (torch.distributed.checkpoint; the model's own keys, nothing gathered)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    with native_keys():
        dcp.save(get_model_state_dict(model), checkpoint_id=directory)


def load_shards(model: SmolLM, directory: str) -> None:
    """The weights in directory (save_shards') into model, sharded or whole, on any number of processes:
    each reads the parts it holds. A ValueError naming the directory when they do not fit the model."""
    import warnings

    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    with native_keys(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single process")
        state = get_model_state_dict(model)
        try:
            dcp.load(state, checkpoint_id=directory)
        except Exception as e:  # noqa: BLE001 -- DCP's CheckpointException holds every rank's error
            why = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ValueError(f"{directory}: shards that do not fit this model ({why})") from e
        set_model_state_dict(model, state)


def read_sharded(directory: str) -> dict[str, torch.Tensor]:
    """The whole weights of a sharded checkpoint (its config.json and model/), with Hugging Face's keys."""
    model = SmolLM.empty(ModelConfig.load(directory))
    load_shards(model, os.path.join(directory, MODEL_SHARDS))
    return model.state_dict()


def check_finite(state: dict[str, torch.Tensor], source: str) -> None:
    """A ValueError naming the first tensor that holds NaN or inf values (weights a diverged run wrote)."""
    for key, t in state.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            n_nan, n_inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
            raise ValueError(f"{source}: tensor {key!r} holds non-finite values ({n_nan} NaN, {n_inf} inf of "
                             f"{t.numel()}); these weights are broken, use an earlier checkpoint")


def load_state_checked(model: SmolLM, state: dict[str, torch.Tensor], source: str) -> None:
    """Strict load with errors that name the tensor and the file."""
    expected = model.state_dict()
    state = dict(state)
    if TIED_KEY not in state and "model.embed_tokens.weight" in state:
        state[TIED_KEY] = state["model.embed_tokens.weight"]  # Hugging Face omits the tied head
    missing = [k for k in expected if k not in state]
    if missing:
        raise KeyError(f"{source}: missing tensor {missing[0]!r}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    unexpected = [k for k in state if k not in expected and not k.endswith("rotary_emb.inv_freq")]
    if unexpected:
        raise KeyError(f"{source}: unexpected tensor {unexpected[0]!r}; not a SmolLM2/Llama checkpoint for this config")
    for key, ref in expected.items():
        if tuple(state[key].shape) != tuple(ref.shape):
            raise ValueError(f"{source}: tensor {key!r} has shape {tuple(state[key].shape)}, the config "
                             f"expects {tuple(ref.shape)}")
    check_finite(state, source)  # before the tie test: NaN != NaN would read as untied weights
    if not torch.equal(state[TIED_KEY], state["model.embed_tokens.weight"]):
        raise ValueError(f"{source}: lm_head.weight differs from model.embed_tokens.weight, but SmolLM2 ties them")
    with torch.no_grad():
        for key, ref in expected.items():
            if key != TIED_KEY:
                ref.copy_(state[key])


def load_hf_dir(directory: str, kernels: str = "torch") -> SmolLM:
    config = ModelConfig.load(directory)
    state = read_safetensors(directory)
    model = SmolLM.empty(config, kernels, dtype=next(iter(state.values())).dtype)
    load_state_checked(model, state, directory)
    return model


GGUF_LAYER_NAMES = {  # llama.cpp tensor name (in block i) -> Hugging Face name
    "attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
GGUF_TOP_NAMES = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
                  "output.weight": "lm_head.weight"}


def _gguf_key(fields, path: str, key: str, default=None):
    field = fields.get(key)
    if field is None:
        if default is not None:
            return default
        raise KeyError(f"{path}: GGUF metadata has no {key!r}")
    return field.contents()


def gguf_config(fields, path: str) -> ModelConfig:
    arch = _gguf_key(fields, path, "general.architecture")
    if arch != "llama":
        raise ValueError(f"{path}: GGUF architecture is {arch!r}, expected 'llama' (SmolLM2)")
    heads = _gguf_key(fields, path, "llama.attention.head_count")
    hidden = _gguf_key(fields, path, "llama.embedding_length")
    vocab = fields.get("llama.vocab_size")
    return ModelConfig(
        vocab_size=vocab.contents() if vocab else len(_gguf_key(fields, path, "tokenizer.ggml.tokens")),
        hidden_size=hidden,
        num_hidden_layers=_gguf_key(fields, path, "llama.block_count"),
        num_attention_heads=heads,
        num_key_value_heads=_gguf_key(fields, path, "llama.attention.head_count_kv", heads),
        head_dim=_gguf_key(fields, path, "llama.rope.dimension_count", hidden // heads),
        intermediate_size=_gguf_key(fields, path, "llama.feed_forward_length"),
        rms_norm_eps=float(_gguf_key(fields, path, "llama.attention.layer_norm_rms_epsilon")),
        rope_theta=float(_gguf_key(fields, path, "llama.rope.freq_base", 10000.0)),
        max_position_embeddings=_gguf_key(fields, path, "llama.context_length"),
        bos_token_id=_gguf_key(fields, path, "tokenizer.ggml.bos_token_id", 0),
        eos_token_id=_gguf_key(fields, path, "tokenizer.ggml.eos_token_id", 0),
    )


def unpermute_qk(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Undo llama.cpp's convert-time permutation of q/k rows (it interleaves the two rotary halves of
    each head, for its own RoPE kernel): (n_head, Dh/2, 2, D) -> (n_head, 2, Dh/2, D)."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def read_gguf(path: str) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Config and dequantized fp32 tensors (Hugging Face names) of a llama GGUF file."""
    from gguf import GGUFReader, dequantize

    try:
        reader = GGUFReader(path)
    except Exception as e:
        raise ValueError(f"{path}: not a readable GGUF file ({e})") from e
    config = gguf_config(reader.fields, path)
    state = {}
    for t in reader.tensors:
        if t.name in GGUF_TOP_NAMES:
            name = GGUF_TOP_NAMES[t.name]
        else:
            parts = t.name.split(".")  # blk.{i}.{what}.weight
            if len(parts) != 4 or parts[0] != "blk" or parts[2] not in GGUF_LAYER_NAMES:
                raise KeyError(f"{path}: unexpected GGUF tensor {t.name!r}")
            name = f"model.layers.{parts[1]}.{GGUF_LAYER_NAMES[parts[2]]}.weight"
        w = torch.from_numpy(dequantize(t.data, t.tensor_type).astype("float32", copy=False).copy())
        if w.numel() != int(t.n_elements):
            raise ValueError(f"{path}: tensor {t.name!r} has {w.numel()} values, expected {int(t.n_elements)}")
        w = w.reshape(tuple(int(n) for n in reversed(t.shape)))  # GGUF lists dims fastest-first
        if name.endswith("q_proj.weight"):
            w = unpermute_qk(w, config.num_attention_heads)
        elif name.endswith("k_proj.weight"):
            w = unpermute_qk(w, config.num_key_value_heads)
        state[name] = w
    return config, state


def load_gguf(path: str, kernels: str = "torch") -> SmolLM:
    config, state = read_gguf(path)
    model = SmolLM.empty(config, kernels)
    load_state_checked(model, state, path)
    return model


def write_hf_files(model: SmolLM, directory: str, tokenizer=None, weights: bool = True) -> None:
    """config.json, model.safetensors (Hugging Face keys, the tied head left out as HF does; not when
    weights is False), generation_config.json and, given a tokenizer, its files, into an existing directory."""
    model.config.save(directory)
    if weights:
        # Copies: q/k/v and gate/up are views of one fused weight each, and safetensors refuses shared memory.
        state = {k: v.detach().to("cpu", memory_format=torch.contiguous_format, copy=True)
                 for k, v in model.state_dict().items() if k != TIED_KEY}
        save_file(state, os.path.join(directory, WEIGHTS_FILE), metadata={"format": "pt"})
    with open(os.path.join(directory, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": model.config.bos_token_id, "eos_token_id": model.config.eos_token_id}, f)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)


def export_hf(model: SmolLM, out_dir: str | os.PathLike, tokenizer=None, overwrite: bool = False) -> str:
    """Write config.json + model.safetensors (+ tokenizer files) as one directory, atomically."""
    out_dir = os.path.abspath(os.fspath(out_dir))
    with atomic_dir(out_dir, overwrite) as tmp:
        write_hf_files(model, tmp, tokenizer)
    return out_dir
