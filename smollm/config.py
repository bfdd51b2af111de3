"""Model configuration: a dataclass, named presets, and Hugging Face `config.json` in and out."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass

# The model's two implementations of its fused ops (smollm.model.select_ops): plain PyTorch, or the
# Triton kernels of the `kernels` package.
KERNEL_CHOICES = ("torch", "triton")


@dataclass
class ModelConfig:
    vocab_size: int = 49152
    hidden_size: int = 576
    num_hidden_layers: int = 30
    num_attention_heads: int = 9
    num_key_value_heads: int = 3
    head_dim: int = 64
    intermediate_size: int = 1536
    rms_norm_eps: float = 1e-5
    # 10000 in the from-scratch recipe; the released SmolLM2 weights use 100000 (and 8192 positions).
    rope_theta: float = 10000.0
    max_position_embeddings: int = 2048
    # 1/sqrt(576): the SmolLM2 recipe's init std.
    initializer_range: float = 0.041666
    bos_token_id: int = 0
    eos_token_id: int = 0

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "head_dim", "intermediate_size", "max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"ModelConfig.{name} must be a positive integer, got {value!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"ModelConfig.num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})")
        if self.head_dim % 2:
            raise ValueError(f"ModelConfig.head_dim must be even for RoPE, got {self.head_dim}")

    @property
    def n_params(self) -> int:
        """Parameter count (tied embedding counted once), without building the model."""
        d, f, v = self.hidden_size, self.intermediate_size, self.vocab_size
        q = self.num_attention_heads * self.head_dim
        kv = self.num_key_value_heads * self.head_dim
        per_layer = d * q + 2 * d * kv + q * d + 3 * d * f + 2 * d
        return v * d + self.num_hidden_layers * per_layer + d

    # ---- Hugging Face config.json ----

    def to_hf_dict(self) -> dict:
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "intermediate_size": self.intermediate_size,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            # transformers < 5 reads rope_theta, >= 5 rope_parameters; write both.
            "rope_theta": self.rope_theta,
            "rope_parameters": {"rope_type": "default", "rope_theta": self.rope_theta},
            "rope_scaling": None,
            "max_position_embeddings": self.max_position_embeddings,
            "initializer_range": self.initializer_range,
            "tie_word_embeddings": True,
            "attention_bias": False,
            "mlp_bias": False,
            "attention_dropout": 0.0,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "use_cache": True,
        }

    @classmethod
    def from_hf_dict(cls, d: dict, source: str = "config.json") -> "ModelConfig":
        """Build from a Hugging Face LlamaConfig dict; `source` names the file in errors."""
        def need(key):
            if key not in d:
                raise KeyError(f"{source}: missing required key {key!r}")
            return d[key]

        model_type = need("model_type")
        if model_type != "llama":
            raise ValueError(f"{source}: model_type is {model_type!r}; only 'llama' (SmolLM2) is supported")
        act = d.get("hidden_act", "silu")
        if act != "silu":
            raise ValueError(f"{source}: hidden_act is {act!r}; only 'silu' is supported")
        if not d.get("tie_word_embeddings", True):
            raise ValueError(f"{source}: tie_word_embeddings is false; SmolLM2 ties lm_head to the embedding")
        for key in ("attention_bias", "mlp_bias"):
            if d.get(key):
                raise ValueError(f"{source}: {key} is true; SmolLM2 has no biases")
        rope = d.get("rope_parameters") or {}
        scaling = d.get("rope_scaling") or {}
        rope_type = rope.get("rope_type", scaling.get("rope_type", scaling.get("type", "default")))
        if rope_type != "default":
            raise ValueError(f"{source}: rope type {rope_type!r} is not supported (only 'default')")
        theta = rope.get("rope_theta", d.get("rope_theta"))
        if theta is None:
            raise KeyError(f"{source}: missing required key 'rope_theta' (or rope_parameters.rope_theta)")

        hidden = need("hidden_size")
        heads = need("num_attention_heads")
        if not isinstance(hidden, int) or not isinstance(heads, int) or heads <= 0:
            raise ValueError(f"{source}: hidden_size={hidden!r}, num_attention_heads={heads!r} must be positive integers")
        head_dim = d.get("head_dim") or hidden // heads

        def tok_id(key, default):
            v = d.get(key, default)
            return v[0] if isinstance(v, list) else (default if v is None else v)

        try:
            return cls(
                vocab_size=need("vocab_size"),
                hidden_size=hidden,
                num_hidden_layers=need("num_hidden_layers"),
                num_attention_heads=heads,
                num_key_value_heads=d.get("num_key_value_heads") or heads,
                head_dim=head_dim,
                intermediate_size=need("intermediate_size"),
                rms_norm_eps=float(d.get("rms_norm_eps", 1e-5)),
                rope_theta=float(theta),
                max_position_embeddings=need("max_position_embeddings"),
                initializer_range=float(d.get("initializer_range", 0.041666)),
                bos_token_id=tok_id("bos_token_id", 0),
                eos_token_id=tok_id("eos_token_id", 0),
            )
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from None

    def save(self, directory: str | os.PathLike) -> str:
        path = os.path.join(directory, "config.json")
        with open(path, "w") as f:
            json.dump(self.to_hf_dict(), f, indent=2)
            f.write("\n")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ModelConfig":
        """From a config.json file or a directory holding one."""
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, "config.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no config.json at {path}")
        try:
            with open(path) as f:
                d = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        return cls.from_hf_dict(d, source=path)


PRESETS: dict[str, ModelConfig] = {
    # SmolLM2-135M as in the from-scratch recipe: 134,515,008 parameters.
    "smollm2-135m": ModelConfig(),
    # The released HuggingFaceTB/SmolLM2-135M hyper-parameters (same shapes, longer RoPE).
    "smollm2-135m-released": ModelConfig(rope_theta=100000.0, max_position_embeddings=8192),
    # The family's larger members, as released (HuggingFaceTB/SmolLM2-360M, -1.7B config.json); the init
    # std is 1/sqrt(hidden_size), as the 135M recipe's.
    "smollm2-360m": ModelConfig(hidden_size=960, num_hidden_layers=32, num_attention_heads=15, num_key_value_heads=5,
                                intermediate_size=2560, rope_theta=100000.0, max_position_embeddings=8192,
                                initializer_range=960 ** -0.5),
    "smollm2-1.7b": ModelConfig(hidden_size=2048, num_hidden_layers=24, num_attention_heads=32,
                                num_key_value_heads=32, intermediate_size=8192, rope_theta=130000.0,
                                max_position_embeddings=8192, initializer_range=2048 ** -0.5),
    # Small enough to train visibly on 2 CPU cores; same tokenizer (vocab 49152).
    "tiny": ModelConfig(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                        head_dim=32, intermediate_size=384, max_position_embeddings=512,
                        initializer_range=0.088),
}


def get_preset(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise KeyError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[name])
