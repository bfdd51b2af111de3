"""SmolLM2 (a Llama decoder) with Hugging Face LlamaForCausalLM state-dict keys.

`kernels="torch"` runs the plain-PyTorch references in `smollm/kernels/`; `kernels="triton"` runs the fused
Triton ops. Both give the same numbers within dtype tolerance.

Two layout choices serve speed and keep Hugging Face's format: q, k and v come from one GEMM (and
gate and up from another), whose outputs feed RoPE and SwiGLU as strided views, while the state
dict still holds the separate `q_proj`/`k_proj`/`v_proj`/`gate_proj`/`up_proj` weights (views of
the fused ones; see `hf_split_keys`); and each block hands its last branch output to the next
norm, which adds it to the residual stream in the same kernel (`add_rms_norm`).
"""

from __future__ import annotations

import contextlib
import threading
from types import SimpleNamespace

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

from smollm.kernels import cross_entropy, rmsnorm, rope, swiglu
from smollm.config import KERNEL_CHOICES, ModelConfig


def select_ops(name: str) -> SimpleNamespace:
    """The four fused ops, by implementation name."""
    if name == "torch":
        return SimpleNamespace(rms_norm=rmsnorm.rms_norm_reference, add_rms_norm=rmsnorm.add_rms_norm_reference,
                               rope=rope.rope_reference, swiglu=swiglu.swiglu_packed_reference,
                               linear_cross_entropy=cross_entropy.linear_cross_entropy_reference)
    if name == "triton":
        return SimpleNamespace(rms_norm=rmsnorm.rms_norm, add_rms_norm=rmsnorm.add_rms_norm, rope=rope.rope,
                               swiglu=swiglu.swiglu_packed, linear_cross_entropy=cross_entropy.linear_cross_entropy)
    raise ValueError(f"kernels must be one of {KERNEL_CHOICES}, got {name!r}")


_keys = threading.local()


@contextlib.contextmanager
def native_keys():
    """State dicts with the model's own keys inside (`qkv_proj`, `gate_up_proj` whole): a sharded
    checkpoint's, where splitting a weight sharded by rows would gather it, and the parameter names
    (which torch.distributed.checkpoint's state-dict functions expect)."""
    before = getattr(_keys, "native", False)
    _keys.native = True
    try:
        yield
    finally:
        _keys.native = before


def hf_split_keys(module: nn.Module, fused: str, parts: list[tuple[str, int]]) -> None:
    """Give `module` Hugging Face's state-dict keys for its fused projection `fused`: the weight is
    saved as its row blocks `parts` [(name, rows), ...] (views, so loading into them writes the fused
    weight) in place of `fused.weight`, and loaded from them (not inside native_keys())."""
    sizes = [rows for _, rows in parts]

    def save(mod, state, prefix, local_metadata):
        if getattr(_keys, "native", False):
            return
        pieces = state.pop(prefix + fused + ".weight").split(sizes)
        rest = [(k, state.pop(k)) for k in [k for k in state if k.startswith(prefix)]]  # keep HF's order
        state.update((prefix + name + ".weight", piece) for (name, _), piece in zip(parts, pieces))
        state.update(rest)

    def load(mod, state, prefix, *args):
        if getattr(_keys, "native", False):
            return
        keys = [prefix + name + ".weight" for name, _ in parts]
        if all(k in state for k in keys):
            state[prefix + fused + ".weight"] = torch.cat([state.pop(k) for k in keys])

    module.register_state_dict_post_hook(save)
    module.register_load_state_dict_pre_hook(load)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, ops: SimpleNamespace):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps
        self.ops = ops

    def forward(self, x, delta=None):
        """x (B, T, D): the residual stream; delta: the last branch's output, added to it first (in
        the same kernel on the triton path). Returns (the residual stream, its norm)."""
        if delta is None:
            return x, self.ops.rms_norm(x, self.weight, self.eps)
        return self.ops.add_rms_norm(x, delta, self.weight, self.eps)


class KVCache(nn.Module):
    """Static cache of one layer's keys and values: the model's 3 KV heads (never the 9 expanded
    ones), preallocated to the longest sequence, written at given slots."""

    def __init__(self, batch: int, slots: int, n_kv: int, head_dim: int, dtype: torch.dtype, device):
        super().__init__()
        self.register_buffer("k", torch.zeros(batch, n_kv, slots, head_dim, dtype=dtype, device=device),
                             persistent=False)  # (B, Hkv, S, Dh)
        self.register_buffer("v", torch.zeros(batch, n_kv, slots, head_dim, dtype=dtype, device=device),
                             persistent=False)  # (B, Hkv, S, Dh)

    def update(self, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """slots (T,), k/v (B, Hkv, T, Dh) -> the whole cache (B, Hkv, S, Dh) each."""
        self.k.index_copy_(2, slots, k.to(self.k.dtype))
        self.v.index_copy_(2, slots, v.to(self.v.dtype))
        return self.k, self.v


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, ops: SimpleNamespace):
        super().__init__()
        self.n_head, self.n_kv, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        d, q, kv = cfg.hidden_size, self.n_head * self.head_dim, self.n_kv * self.head_dim
        self.qkv_proj = nn.Linear(d, q + 2 * kv, bias=False)  # q, k and v in one GEMM
        self.o_proj = nn.Linear(q, d, bias=False)
        hf_split_keys(self, "qkv_proj", [("q_proj", q), ("k_proj", kv), ("v_proj", kv)])
        self.ops = ops
        self.cache: KVCache | None = None

    def forward(self, x, cos, sin, slots=None, mask=None):
        """Training / full context: x (B, T, D), causal, or under mask (document_mask) when given. With
        a cache: the new tokens x are written at `slots` (T,) and attend to the first n cache slots under
        mask (B, 1, T, n), n <= S."""
        B, T, _ = x.shape
        qkv = self.qkv_proj(x).view(B, T, self.n_head + 2 * self.n_kv, self.head_dim)  # (B, T, Hq + 2 Hkv, Dh)
        # Strided views, no copies: q (B, T, Hq, Dh), k and v (B, T, Hkv, Dh)
        q, k, v = qkv.split([self.n_head, self.n_kv, self.n_kv], dim=2)
        q, k = self.ops.rope(q, k, cos, sin)
        # SDPA wants (B, H, T, Dh); enable_gqa shares each KV head across its query group without
        # materializing the repeated K/V.
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        gqa = self.n_kv != self.n_head
        if slots is None and mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)  # (B, Hq, T, Dh)
        elif slots is None and isinstance(mask, BlockMask):
            y = flex_attention(q, k, v, block_mask=mask, enable_gqa=gqa)  # (B, Hq, T, Dh)
        elif slots is None:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)  # (B, Hq, T, Dh)
        else:
            k, v = self.cache.update(slots, k, v)  # (B, Hkv, S, Dh)
            n = mask.shape[-1]  # slots past n are empty: not read at all (a view, no copy)
            k, v = k[:, :, :n], v[:, :, :n]  # (B, Hkv, n, Dh)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)  # (B, Hq, T, Dh)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))


FLEX: bool | None = None  # document masks by flex_attention: None = on a GPU (where it compiles to one kernel)


def document_mask(documents: torch.Tensor):
    """The block-causal mask of documents (B, T): position i may attend to j iff j <= i and both are
    in one document. A flex_attention BlockMask (FLEX), whose kernel skips the blocks that are all
    masked; else a (B, 1, T, T) bool mask for SDPA. The two agree (tests/test_model.py)."""
    B, T = documents.shape
    if FLEX if FLEX is not None else documents.is_cuda:
        def same_document(b, h, q, kv):
            return (kv <= q) & (documents[b, q] == documents[b, kv])

        return create_block_mask(same_document, B, None, T, T, device=documents.device)
    causal = torch.ones(T, T, dtype=torch.bool, device=documents.device).tril()  # (T, T)
    return (documents[:, None, :, None] == documents[:, None, None, :]) & causal  # (B, 1, T, T)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig, ops: SimpleNamespace):
        super().__init__()
        f = cfg.intermediate_size
        self.gate_up_proj = nn.Linear(cfg.hidden_size, 2 * f, bias=False)  # gate and up in one GEMM
        self.down_proj = nn.Linear(f, cfg.hidden_size, bias=False)
        self.ops = ops
        hf_split_keys(self, "gate_up_proj", [("gate_proj", f), ("up_proj", f)])

    def forward(self, x):
        # silu(gate) * up on the two halves of (B, T, 2F), in place; its gradient comes back whole.
        return self.down_proj(self.ops.swiglu(self.gate_up_proj(x)))  # (B, T, D)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, ops: SimpleNamespace):
        super().__init__()
        # Declared in Hugging Face's order, so state-dict keys come out in the same order.
        self.self_attn = Attention(cfg, ops)
        self.mlp = MLP(cfg, ops)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, ops)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, ops)

    def forward(self, x, delta, cos, sin, slots=None, mask=None):
        """x (B, T, D): the residual stream, still without delta, the last block's MLP output (None
        before the first block). Returns (the residual stream, this block's MLP output): each add
        happens inside the next norm."""
        x, h = self.input_layernorm(x, delta)
        x, h = self.post_attention_layernorm(x, self.self_attn(h, cos, sin, slots, mask))
        return x, self.mlp(h)


class Decoder(nn.Module):
    """Hugging Face's `LlamaModel`: holds the `model.*` keys."""

    def __init__(self, cfg: ModelConfig, ops: SimpleNamespace):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg, ops) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, ops)


class SmolLM(nn.Module):
    def __init__(self, config: ModelConfig, kernels: str = "torch"):
        super().__init__()
        self.config = config
        self.kernels = kernels
        self.ops = select_ops(kernels)
        self.model = Decoder(config, self.ops)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.lm_head.weight = self.model.embed_tokens.weight  # tied
        # Not persistent: the state dict holds exactly Hugging Face's keys.
        self.register_buffer("rope_cos", torch.empty(0), persistent=False)  # (P, Dh)
        self.register_buffer("rope_sin", torch.empty(0), persistent=False)  # (P, Dh)
        self.reset_rope()
        self.apply(self._init_weights)

    @classmethod
    def empty(cls, config: ModelConfig, kernels: str = "torch", dtype: torch.dtype = torch.float32) -> "SmolLM":
        """Uninitialized parameters (to be loaded into): skips the seconds that random init takes."""
        with torch.device("meta"):
            model = cls(config, kernels)
        model = model.to_empty(device="cpu")
        model.lm_head.weight = model.model.embed_tokens.weight  # to_empty unties
        model.reset_rope()
        return model.to(dtype)

    def reset_rope(self):
        cos, sin = rope.rope_tables(self.config.head_dim, self.config.max_position_embeddings, self.config.rope_theta)
        self.rope_cos = cos.to(self.rope_cos.device)
        self.rope_sin = sin.to(self.rope_sin.device)

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
        elif isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)

    def set_kernels(self, kernels: str) -> "SmolLM":
        """Switch every module to another implementation in place (they share one ops namespace)."""
        vars(self.ops).update(vars(select_ops(kernels)))
        self.kernels = kernels
        return self

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())  # parameters() yields the tied weight once

    def hidden_states(self, input_ids: torch.Tensor, documents: torch.Tensor | None = None) -> torch.Tensor:
        """Final-norm hidden states (B, T, D) for input_ids (B, T); with documents (B, T) (ids, as
        smollm.data.document_ids gives them), each token attends only to its own document's."""
        B, T = input_ids.shape
        if T > self.config.max_position_embeddings:
            raise ValueError(f"sequence length {T} exceeds max_position_embeddings "
                             f"{self.config.max_position_embeddings}")
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]  # (T, Dh)
        mask = None if documents is None else document_mask(documents)
        x, delta = self.model.embed_tokens(input_ids), None  # (B, T, D)
        for layer in self.model.layers:
            x, delta = layer(x, delta, cos, sin, mask=mask)
        return self.model.norm(x, delta)[1]

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor | None = None,
                documents: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids (B, T) -> logits (B, T, V); with targets (B, T), the mean loss over targets != -100;
        with documents (B, T), attention block-causal within each document."""
        h = self.hidden_states(input_ids, documents)  # (B, T, D)
        if targets is None:
            return self.lm_head(h)  # (B, T, V)
        D = h.shape[-1]
        return self.ops.linear_cross_entropy(h.reshape(-1, D), self.lm_head.weight, targets.reshape(-1))

    # ---- inference with a KV cache (smollm/generate.py) ----

    def setup_cache(self, batch: int, slots: int, dtype: torch.dtype | None = None) -> None:
        """Preallocate every layer's cache for `batch` sequences of up to `slots` tokens."""
        if slots > self.config.max_position_embeddings:
            raise ValueError(f"{slots} cache slots exceed max_position_embeddings {self.config.max_position_embeddings}")
        w = self.model.embed_tokens.weight
        c = self.config
        for layer in self.model.layers:
            layer.self_attn.cache = KVCache(batch, slots, c.num_key_value_heads, c.head_dim, dtype or w.dtype, w.device)

    def clear_cache(self) -> None:
        for layer in self.model.layers:
            layer.self_attn.cache = None

    def forward_cached(self, input_ids: torch.Tensor, slots: torch.Tensor, positions: torch.Tensor,
                       mask: torch.Tensor, last_only: bool = True) -> torch.Tensor:
        """input_ids (B, T) written at cache slots (T,), at RoPE positions (B, T), attending to the first
        n <= S slots under mask (B, 1, T, n) (True: may attend). Returns logits (B, V) of the last
        token, or (B, T, V)."""
        cos, sin = self.rope_cos[positions], self.rope_sin[positions]  # (B, T, Dh)
        x, delta = self.model.embed_tokens(input_ids), None  # (B, T, D)
        for layer in self.model.layers:
            x, delta = layer(x, delta, cos, sin, slots, mask)
        if last_only:
            x, delta = x[:, -1:], delta[:, -1:]
        logits = self.lm_head(self.model.norm(x, delta)[1])  # (B, T or 1, V)
        return logits[:, -1] if last_only else logits
