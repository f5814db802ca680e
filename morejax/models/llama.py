"""LLaMA-family decoders (LLaMA 1/2/3, SmolLM2, Mistral, Qwen 2/2.5/3, Gemma 2, Gemma 3 text,
Phi-3) in Linen, with an explicit KV cache.

The families differ by switches of one config (q/k/v biases, per-head q/k norms, sliding-window
layers, Gemma's norms and soft-capping, Phi-3's fused projections); `FAMILIES` maps each Hugging
Face ``model_type`` to its architecture and `FAMILY_TRAITS` to the switches it fixes. Every
projection is an ``nn.Dense`` named as in Hugging Face, so the transform can adapt it unmodified
and checkpoints map one-to-one. The KV cache is a plain pytree passed in and returned (not a
Flax ``cache`` collection) so that decoding loops can carry it through ``jax.jit`` /
``lax.while_loop`` without knowing how the parameters are structured.

Shape suffixes: B batch, L query length, S key (cache) length, D hidden, H query
heads, G key/value heads, R = H // G query heads per KV head, K head dim,
F feed-forward width, V vocabulary, N layers, Q rotated dims of a head (K unless partial),
E a projection's output width before it is split into heads.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "RopeScaling",
    "LlamaConfig",
    "CONFIGS",
    "ATTENTION",
    "REMAT_POLICIES",
    "RMSNorm",
    "rope_inv_freq",
    "apply_rope",
    "LlamaAttention",
    "LlamaMLP",
    "LlamaDecoderLayer",
    "LlamaForCausalLM",
    "init_cache",
    "abstract_params",
    "load_hf_checkpoint",
    "save_hf_checkpoint",
    "default_positions",
    "hf_rename",
    "hf_inverse_rename",
]

# A finite "minus infinity" keeps fully masked rows (left padding) NaN-free.
_MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)

_DTYPE_NAMES = {
    "float32": jnp.float32,
    "bfloat16": jnp.bfloat16,
    "float16": jnp.float16,
    "fp32": jnp.float32,
    "bf16": jnp.bfloat16,
    "fp16": jnp.float16,
}


def _as_dtype(dtype):
    if isinstance(dtype, str):
        return _DTYPE_NAMES[dtype]
    return dtype


# ----------------------------------------------------------------------------- config

# Names for jax.checkpoint policies; 'none' means no rematerialisation.
REMAT_POLICIES: dict[str, Callable | None] = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "minimal": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_with_no_batch_dims": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "everything": jax.checkpoint_policies.everything_saveable,
}

# Attention implementations of cacheless forwards (LlamaConfig.attention).
ATTENTION = ("einsum", "xla", "cudnn")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """RoPE frequency scaling: LLaMA-3.1's frequency-dependent one ("rope_type": "llama3"), or
    every frequency divided by `factor` ("linear", Gemma 3's global layers; the other fields
    unused)."""

    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192
    rope_type: str = "llama3"

    def __post_init__(self):
        if self.rope_type not in ("llama3", "linear"):
            raise ValueError(f"rope_type={self.rope_type!r}; choose 'llama3' or 'linear'")


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Shapes and numerics of a LLaMA-family decoder; hashable so it can be static."""

    vocab_size: int = 32000
    hidden_size: int = 4096
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int = 32
    head_dim: int | None = None  # None: hidden_size // num_heads
    intermediate_size: int = 11008
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    # Gemma 3: the RoPE base of sliding layers, unscaled (rope_theta and rope_scaling: full ones).
    rope_local_theta: float | None = None
    rms_norm_eps: float = 1e-5
    tie_embeddings: bool = False
    max_seq_len: int = 2048
    bos_token_id: int | None = 1
    eos_token_id: int | tuple[int, ...] | None = 2
    initializer_range: float = 0.02
    dtype: Any = jnp.float32  # compute
    param_dtype: Any = jnp.float32
    scan_layers: bool = False
    remat: str = "none"  # a key of REMAT_POLICIES
    # Cacheless forwards (training, scoring): "einsum" materialises the scores; "xla" and
    # "cudnn" (flash attention on NVIDIA GPUs) call jax.nn.dot_product_attention with the
    # causal mask and per-row key lengths, so their rows must be right-padded (training
    # batches are; generation is left-padded but runs with a cache, which uses einsum).
    attention: str = "einsum"
    model_type: str = "llama"  # a key of FAMILIES: the Hugging Face architecture it exports as
    qkv_bias: bool = False  # Qwen 2 (implied by its architecture), LLaMA attention_bias
    o_bias: bool = False  # LLaMA / Qwen 3 attention_bias
    qk_norm: bool = False  # Qwen 3: RMSNorm over each head's q and k before RoPE
    # Keys a query at slot i attends to are slots (i - sliding_window, i] in the layers that
    # `layer_types` marks "sliding_attention" (None: every layer, when sliding_window is set).
    sliding_window: int | None = None
    layer_types: tuple[str, ...] | None = None
    pad_token_id: int | None = None  # written back: some families' defaults lie outside a vocab
    # Switches an architecture fixes (None: the model_type's, from FAMILY_TRAITS).
    hidden_act: str | None = None  # the gate's activation, a key of ACTIVATIONS
    norm_plus_one: bool | None = None  # Gemma: RMSNorm scales by (1 + w), w stored
    sandwich_norms: bool | None = None  # Gemma: attention and MLP outputs normed too
    scale_embeddings: bool | None = None  # Gemma: embeddings times sqrt(hidden_size)
    # Phi-3: q,k,v as one qkv_proj kernel, gate and up as one gate_up_proj (an adapter on one
    # treats it as one matrix, as PEFT does).
    fused_proj: bool | None = None
    partial_rotary_factor: float = 1.0  # Phi-3: RoPE on the first int(K * factor) dims only
    # Gemma: scores scaled by query_pre_attn_scalar**-0.5 (None: head_dim's); c * tanh(x / c)
    # caps of the attention scores and of the final logits.
    query_pre_attn_scalar: float | None = None
    attn_softcap: float | None = None
    final_softcap: float | None = None

    def __post_init__(self):
        if self.head_dim is None:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
        object.__setattr__(self, "dtype", _as_dtype(self.dtype))
        object.__setattr__(self, "param_dtype", _as_dtype(self.param_dtype))
        if isinstance(self.eos_token_id, list):
            object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))
        if isinstance(self.layer_types, list):
            object.__setattr__(self, "layer_types", tuple(self.layer_types))
        if self.model_type not in FAMILIES:
            raise ValueError(f"model_type={self.model_type!r}; choose one of {sorted(FAMILIES)}")
        for name, value in FAMILY_TRAITS[self.model_type].items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
            elif getattr(self, name) != value:
                raise ValueError(
                    f"{self.model_type} has {name}={value!r}, got {getattr(self, name)!r}: "
                    "no Hugging Face architecture holds that combination"
                )
        if self.model_type in ("gemma2", "gemma3_text"):
            # What transformers always sets for Gemma, explicit so that config.json round trips.
            if self.query_pre_attn_scalar is None:
                object.__setattr__(self, "query_pre_attn_scalar", self.head_dim)
            if self.model_type == "gemma3_text" and self.rope_local_theta is None:
                object.__setattr__(self, "rope_local_theta", self.rope_theta)
            if self.model_type == "gemma3_text" and not self.qk_norm:
                raise ValueError("gemma3_text has per-head q/k norms: set qk_norm=True")
        for name, families in _FAMILY_FIELDS.items():
            default = type(self).__dataclass_fields__[name].default
            if getattr(self, name) != default and self.model_type not in families:
                raise ValueError(
                    f"{name}={getattr(self, name)} is {'/'.join(families)} only: {self.model_type} "
                    "has no such setting"
                )
        if self.layer_types is not None:
            bad = sorted(set(self.layer_types) - set(LAYER_TYPES))
            if bad or len(self.layer_types) != self.num_layers:
                raise ValueError(
                    f"layer_types must give one of {LAYER_TYPES} for each of the {self.num_layers} "
                    f"layers; got {len(self.layer_types)} entries"
                    + (f", unknown {bad}" if bad else "")
                )
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}"
            )
        if self.rotary_dim % 2 or self.rotary_dim <= 0:
            raise ValueError(
                f"rotary embeddings need an even number of rotated dims, got {self.rotary_dim}"
            )
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"remat={self.remat!r}; choose one of {sorted(REMAT_POLICIES)}")
        if self.attention not in ATTENTION:
            raise ValueError(
                f"attention={self.attention!r}; choose one of {ATTENTION} (cudnn: GPU)"
            )
        if self.attention != "einsum" and self.attn_softcap is not None:
            raise ValueError(
                f"attention={self.attention!r}: jax.nn.dot_product_attention has no logit "
                f"soft-capping, which {self.model_type} (attn_softcap={self.attn_softcap}) needs; "
                "use attention='einsum'"
            )

    def replace(self, **changes) -> LlamaConfig:
        return dataclasses.replace(self, **changes)

    @property
    def rotary_dim(self) -> int:
        """Q: the leading dims of each head that RoPE rotates (as transformers rounds it)."""
        return int(self.head_dim * self.partial_rotary_factor)

    def sliding_layers(self) -> tuple[bool, ...]:
        """Per layer: does it attend within the sliding window only?"""
        if self.sliding_window is None:
            return (False,) * self.num_layers
        if self.layer_types is None:
            return (True,) * self.num_layers
        return tuple(t == "sliding_attention" for t in self.layer_types)

    @classmethod
    def from_hf_config(cls, hf: Mapping[str, Any], **overrides) -> LlamaConfig:
        """Reads a Hugging Face ``config.json`` dict, in the 4.x or the 5.x layout.

        Every field that changes the numbers is either honoured or an error naming it: a
        checkpoint that loads must give transformers' logits.
        """
        model_type = hf.get("model_type", "llama")
        if model_type not in FAMILIES:
            why = NOT_IMPLEMENTED.get(model_type, "")
            raise NotImplementedError(
                f"config.json model_type {model_type!r}: {why + '; ' if why else ''}the decoders "
                f"here are {', '.join(sorted(FAMILIES))}"
            )
        hf = {**_HF_DEFAULTS.get(model_type, {}), **hf}
        gemma = model_type in ("gemma2", "gemma3_text")
        if model_type == "gemma3_text":
            theta, scaling, local_theta = _hf_rope_gemma3(hf)
        else:
            (theta, scaling), local_theta = _hf_rope(hf), None
        act_field = "hidden_activation" if gemma else "hidden_act"
        act = hf.get(act_field, "silu")
        if act != FAMILY_TRAITS[model_type]["hidden_act"]:
            raise NotImplementedError(
                f"config.json {act_field} {act!r}: {model_type} uses "
                f"{FAMILY_TRAITS[model_type]['hidden_act']!r}"
            )
        partial = (hf.get("rope_parameters") or {}).get("partial_rotary_factor")
        partial = float(hf.get("partial_rotary_factor", 1.0) if partial is None else partial)
        if partial != 1.0 and model_type != "phi3":
            raise NotImplementedError(
                f"config.json partial_rotary_factor={partial}: {model_type} rotates the whole head"
            )
        if hf.get("mlp_bias"):
            raise NotImplementedError("config.json mlp_bias=true: the MLP here has no biases")
        if hf.get("use_bidirectional_attention"):
            raise NotImplementedError(
                "config.json use_bidirectional_attention=true: the decoders here are causal"
            )
        window, layer_types = _hf_sliding(hf, model_type)
        attention_bias = bool(hf.get("attention_bias", False))
        kw = dict(
            model_type=model_type,
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=hf["num_attention_heads"],
            num_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
            head_dim=hf.get("head_dim"),
            intermediate_size=hf["intermediate_size"],
            rope_theta=theta,
            rope_scaling=scaling,
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            max_seq_len=int(hf.get("max_position_embeddings", 2048)),
            bos_token_id=hf.get("bos_token_id"),
            eos_token_id=hf.get("eos_token_id"),
            pad_token_id=hf.get("pad_token_id"),
            initializer_range=float(hf.get("initializer_range", 0.02)),
            partial_rotary_factor=partial,
            # Phi3Attention has no biases, whatever attention_bias says.
            qkv_bias=model_type == "qwen2" or (attention_bias and model_type != "phi3"),
            o_bias=attention_bias and model_type not in ("qwen2", "phi3"),
            qk_norm=model_type in ("qwen3", "gemma3_text"),
            sliding_window=window,
            layer_types=layer_types,
        )
        if gemma:
            kw.update(
                rope_local_theta=local_theta,
                query_pre_attn_scalar=hf.get("query_pre_attn_scalar"),
                final_softcap=hf.get("final_logit_softcapping"),
            )
        if model_type == "gemma2":  # Gemma 3's attention ignores attn_logit_softcapping
            kw["attn_softcap"] = hf.get("attn_logit_softcapping")
        kw.update(overrides)
        return cls(**kw)

    def to_hf_config(self) -> dict[str, Any]:
        """The ``config.json`` dict that Hugging Face ``LlamaForCausalLM`` reads back."""
        gemma = self.model_type in ("gemma2", "gemma3_text")
        out = {
            "architectures": [FAMILIES[self.model_type]],
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "intermediate_size": self.intermediate_size,
            ("hidden_activation" if gemma else "hidden_act"): self.hidden_act,
            "rope_theta": self.rope_theta,
            "rms_norm_eps": self.rms_norm_eps,
            "tie_word_embeddings": self.tie_embeddings,
            "max_position_embeddings": self.max_seq_len,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": (
                list(self.eos_token_id)
                if isinstance(self.eos_token_id, tuple)
                else self.eos_token_id
            ),
            "pad_token_id": self.pad_token_id,
            "initializer_range": self.initializer_range,
            "mlp_bias": False,
            "torch_dtype": jnp.dtype(self.param_dtype).name,
        }
        if gemma:
            out["query_pre_attn_scalar"] = self.query_pre_attn_scalar
            out["attn_logit_softcapping"] = self.attn_softcap
            out["final_logit_softcapping"] = self.final_softcap
        if self.model_type == "gemma3_text":
            out["rope_local_base_freq"] = self.rope_local_theta
        if self.model_type != "qwen2":  # Qwen 2's q/k/v biases are its architecture's
            out["attention_bias"] = self.o_bias
            if self.qkv_bias != self.o_bias:
                raise ValueError(f"{self.model_type} has biases on all of q,k,v,o or none")
        if self.model_type == "phi3":
            if self.o_bias:
                raise ValueError("phi3 has no attention biases")
            out["partial_rotary_factor"] = self.partial_rotary_factor
        if self.model_type in ("qwen2", "qwen3"):
            out["use_sliding_window"] = self.sliding_window is not None
        if self.sliding_window is not None or self.model_type in ("mistral", "phi3") or gemma:
            out["sliding_window"] = self.sliding_window
        if self.layer_types is not None:
            out["layer_types"] = list(self.layer_types)
        elif self.model_type in ("qwen2", "qwen3") or gemma:
            out["layer_types"] = [
                "sliding_attention" if x else "full_attention" for x in self.sliding_layers()
            ]
        rs = self.rope_scaling
        if rs is not None and rs.rope_type == "linear":
            out["rope_scaling"] = {"rope_type": "linear", "factor": rs.factor}
        elif rs is not None:
            out["rope_scaling"] = dataclasses.asdict(rs)
        return out


# Hugging Face model_type -> the architecture class a checkpoint of it loads as.
FAMILIES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "gemma3_text": "Gemma3ForCausalLM",
    "phi3": "Phi3ForCausalLM",
}
LAYER_TYPES = ("full_attention", "sliding_attention")

# Why a neighbouring model_type is an error rather than a decoder here.
NOT_IMPLEMENTED = {
    "gemma3": "Gemma 3's vision tower (Gemma3ForConditionalGeneration) is not implemented; "
    "text-only Gemma 3 checkpoints (gemma3_text) load",
    "mixtral": "mixture-of-experts MLPs are not implemented",
    "qwen2_moe": "mixture-of-experts MLPs are not implemented",
    "qwen3_moe": "mixture-of-experts MLPs are not implemented",
}

_LLAMA_TRAITS = dict(
    hidden_act="silu",
    norm_plus_one=False,
    sandwich_norms=False,
    scale_embeddings=False,
    fused_proj=False,
)
_GEMMA_TRAITS = dict(
    _LLAMA_TRAITS,
    hidden_act="gelu_pytorch_tanh",
    norm_plus_one=True,
    sandwich_norms=True,
    scale_embeddings=True,
)
# model_type -> the switches its architecture fixes (LlamaConfig fills them in, or checks them).
FAMILY_TRAITS = {
    "llama": _LLAMA_TRAITS,
    "mistral": _LLAMA_TRAITS,
    "qwen2": _LLAMA_TRAITS,
    "qwen3": _LLAMA_TRAITS,
    "gemma2": _GEMMA_TRAITS,
    "gemma3_text": _GEMMA_TRAITS,
    "phi3": dict(_LLAMA_TRAITS, fused_proj=True),
}
# Settings only some architectures have (elsewhere they must keep their defaults).
_FAMILY_FIELDS = {
    "query_pre_attn_scalar": ("gemma2", "gemma3_text"),
    "attn_softcap": ("gemma2",),
    "final_softcap": ("gemma2", "gemma3_text"),
    "rope_local_theta": ("gemma3_text",),
    "partial_rotary_factor": ("phi3",),
}
# transformers' defaults for keys a config.json may leave out, where they differ from LLaMA's.
_HF_DEFAULTS = {
    "gemma2": dict(
        head_dim=256,
        hidden_activation="gelu_pytorch_tanh",
        query_pre_attn_scalar=256,
        attn_logit_softcapping=50.0,
        final_logit_softcapping=30.0,
        sliding_window=4096,
        tie_word_embeddings=True,
        max_position_embeddings=8192,
    ),
    "gemma3_text": dict(
        head_dim=256,
        hidden_activation="gelu_pytorch_tanh",
        query_pre_attn_scalar=256,
        sliding_window=4096,
        sliding_window_pattern=6,
        tie_word_embeddings=True,
        max_position_embeddings=131072,
        rope_theta=1_000_000.0,
        rope_local_base_freq=10_000.0,
    ),
    "phi3": dict(rms_norm_eps=1e-5, max_position_embeddings=4096),
}


def _hf_sliding(hf: Mapping[str, Any], model_type: str):
    """(sliding_window, layer_types) as transformers builds them for each family."""
    window = hf.get("sliding_window")
    if model_type == "llama":
        if window is not None:
            raise NotImplementedError(
                f"config.json sliding_window={window}: LLaMA attends to every earlier token"
            )
        return None, None
    if model_type in ("qwen2", "qwen3") and not hf.get("use_sliding_window", False):
        window = None
    layer_types = hf.get("layer_types")
    if model_type in ("mistral", "phi3") and layer_types is not None:
        raise NotImplementedError(
            f"config.json layer_types on a {model_type} model: transformers' {model_type} slides "
            "every layer (alternating attention is Ministral's)"
        )
    if layer_types is None and window is not None and model_type == "gemma2":
        layer_types = _every_nth_full(hf["num_hidden_layers"], 2)
    if layer_types is None and window is not None and model_type == "gemma3_text":
        layer_types = _every_nth_full(hf["num_hidden_layers"], int(hf["sliding_window_pattern"]))
    if layer_types is None and window is not None and model_type in ("qwen2", "qwen3"):
        first = int(hf.get("max_window_layers", 28))
        layer_types = [
            "sliding_attention" if i >= first else "full_attention"
            for i in range(hf["num_hidden_layers"])
        ]
    if layer_types is not None:
        bad = sorted(set(layer_types) - set(LAYER_TYPES))
        if bad:
            raise NotImplementedError(f"config.json layer_types {bad}: known {LAYER_TYPES}")
        if window is None and "sliding_attention" in layer_types:
            raise ValueError("config.json layer_types has sliding layers but no sliding_window")
        layer_types = tuple(layer_types) if window is not None else None
    return (None if window is None else int(window)), layer_types


_LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


def _hf_rope(hf: Mapping[str, Any]) -> tuple[float, RopeScaling | None]:
    """(theta, scaling) from ``rope_parameters`` (transformers 5) or the top-level
    ``rope_theta`` / ``rope_scaling`` (4.x); a rope type or key not implemented is an error."""
    theta, positions = hf.get("rope_theta", 10000.0), hf.get("max_position_embeddings", 8192)
    if hf.get("rope_parameters") is not None:
        return _rope(hf["rope_parameters"], theta, positions, "rope_parameters")
    return _rope(hf.get("rope_scaling") or {}, theta, positions, "rope_scaling")


def _hf_rope_gemma3(hf: Mapping[str, Any]) -> tuple[float, RopeScaling | None, float]:
    """(global theta, global scaling, local theta): transformers 5 writes ``rope_parameters``
    per layer type, 4.x ``rope_theta`` / ``rope_scaling`` plus ``rope_local_base_freq``."""
    rope = hf.get("rope_parameters")
    if rope is None or not set(rope) <= set(LAYER_TYPES):
        return (*_hf_rope(hf), float(hf["rope_local_base_freq"]))
    positions = hf["max_position_embeddings"]
    theta, scaling = _rope(
        rope.get("full_attention") or {},
        hf["rope_theta"],
        positions,
        "rope_parameters.full_attention",
    )
    field = "rope_parameters.sliding_attention"
    local, local_scaling = _rope(
        rope.get("sliding_attention") or {}, hf["rope_local_base_freq"], positions, field
    )
    if local_scaling is not None:
        raise NotImplementedError(
            f"config.json {field}.rope_type {local_scaling.rope_type!r}: sliding layers here "
            "use unscaled RoPE"
        )
    return theta, scaling, local


def _rope(params: Mapping[str, Any], theta, max_positions, field: str):
    """(theta, scaling) of one rope dict; `theta` and `max_positions`: the defaults it may omit."""
    rope = dict(params)
    rope.pop("partial_rotary_factor", None)  # read by from_hf_config
    theta = rope.pop("rope_theta", theta)
    kind = rope.pop("rope_type", rope.pop("type", "default"))
    if kind == "default":
        extra = sorted(rope)
        if extra:
            raise NotImplementedError(f"config.json {field}: keys {extra} with rope_type 'default'")
        return float(theta), None
    if kind == "linear":
        extra = sorted(set(rope) - {"factor"})
        if extra:
            raise NotImplementedError(f"config.json {field}: keys {extra} with rope_type 'linear'")
        return float(theta), RopeScaling(factor=float(rope["factor"]), rope_type="linear")
    if kind != "llama3":
        raise NotImplementedError(
            f"config.json {field}.rope_type {kind!r}: only 'default', 'linear' and 'llama3' are "
            "implemented"
        )
    extra = sorted(set(rope) - set(_LLAMA3_KEYS) - {"attention_factor"})
    if extra or rope.get("attention_factor", 1.0) != 1.0:
        raise NotImplementedError(
            f"config.json {field}: llama3 rope with {extra or ['attention_factor']} is not "
            "implemented"
        )
    return float(theta), RopeScaling(
        factor=float(rope["factor"]),
        low_freq_factor=float(rope.get("low_freq_factor", 1.0)),
        high_freq_factor=float(rope.get("high_freq_factor", 4.0)),
        original_max_position_embeddings=int(
            rope.get("original_max_position_embeddings", max_positions)
        ),
    )


def _every_nth_full(num_layers: int, n: int) -> tuple[str, ...]:
    """Gemma's layer_types: sliding layers, every n-th one full."""
    return tuple(
        "full_attention" if (i + 1) % n == 0 else "sliding_attention" for i in range(num_layers)
    )


# What every size of a family shares; each preset in CONFIGS adds its own numbers.
_LLAMA_7B = dict(
    vocab_size=32000,
    hidden_size=4096,
    num_layers=32,
    num_heads=32,
    num_kv_heads=32,
    intermediate_size=11008,
    rope_theta=10000.0,
)
_LLAMA_3 = dict(
    vocab_size=128256,
    num_heads=32,
    num_kv_heads=8,
    rope_theta=500000.0,
    rms_norm_eps=1e-5,
    bos_token_id=128000,
    eos_token_id=128001,
)
_QWEN_2_5 = dict(
    model_type="qwen2",
    rope_theta=1000000.0,
    rms_norm_eps=1e-6,
    bos_token_id=151643,
    eos_token_id=151643,
    qkv_bias=True,
)
_GEMMA_2 = dict(
    model_type="gemma2",
    vocab_size=256000,
    head_dim=256,
    rope_theta=10000.0,
    rms_norm_eps=1e-6,
    tie_embeddings=True,
    max_seq_len=8192,
    bos_token_id=2,
    eos_token_id=1,
    pad_token_id=0,
    sliding_window=4096,
    query_pre_attn_scalar=256,
    attn_softcap=50.0,
    final_softcap=30.0,
)

# Exact Hugging Face shapes, enough for parameter tables via jax.eval_shape.
CONFIGS: dict[str, LlamaConfig] = {
    "smollm2-135m": LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        num_layers=30,
        num_heads=9,
        num_kv_heads=3,
        intermediate_size=1536,
        rope_theta=100000.0,
        rms_norm_eps=1e-5,
        tie_embeddings=True,
        max_seq_len=8192,
        bos_token_id=1,
        eos_token_id=2,
    ),
    "llama-7b": LlamaConfig(**_LLAMA_7B, rms_norm_eps=1e-6, max_seq_len=2048),
    "llama-2-7b": LlamaConfig(**_LLAMA_7B, rms_norm_eps=1e-5, max_seq_len=4096),
    "llama-3-8b": LlamaConfig(
        **_LLAMA_3, hidden_size=4096, num_layers=32, intermediate_size=14336, max_seq_len=8192
    ),
    "llama3.2-1b": LlamaConfig(
        **_LLAMA_3,
        hidden_size=2048,
        num_layers=16,
        intermediate_size=8192,
        rope_scaling=RopeScaling(factor=32.0),
        tie_embeddings=True,
        max_seq_len=131072,
    ),
    "llama3.1-8b": LlamaConfig(
        **_LLAMA_3,
        hidden_size=4096,
        num_layers=32,
        intermediate_size=14336,
        rope_scaling=RopeScaling(factor=8.0),
        max_seq_len=131072,
    ),
    "mistral-7b": LlamaConfig(
        model_type="mistral",
        vocab_size=32000,
        hidden_size=4096,
        num_layers=32,
        num_heads=32,
        num_kv_heads=8,
        intermediate_size=14336,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        max_seq_len=32768,
        sliding_window=4096,
    ),
    "qwen2.5-0.5b": LlamaConfig(
        **_QWEN_2_5,
        vocab_size=151936,
        hidden_size=896,
        num_layers=24,
        num_heads=14,
        num_kv_heads=2,
        intermediate_size=4864,
        tie_embeddings=True,
        max_seq_len=32768,
    ),
    "qwen2.5-7b": LlamaConfig(
        **_QWEN_2_5,
        vocab_size=152064,
        hidden_size=3584,
        num_layers=28,
        num_heads=28,
        num_kv_heads=4,
        intermediate_size=18944,
        max_seq_len=131072,
    ),
    "qwen3-8b": LlamaConfig(
        model_type="qwen3",
        vocab_size=151936,
        hidden_size=4096,
        num_layers=36,
        num_heads=32,
        num_kv_heads=8,
        head_dim=128,
        intermediate_size=12288,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        max_seq_len=40960,
        bos_token_id=151643,
        eos_token_id=151645,
        qk_norm=True,
    ),
    "gemma2-2b": LlamaConfig(
        **_GEMMA_2,
        hidden_size=2304,
        num_layers=26,
        num_heads=8,
        num_kv_heads=4,
        intermediate_size=9216,
        layer_types=_every_nth_full(26, 2),
    ),
    "gemma2-9b": LlamaConfig(
        **_GEMMA_2,
        hidden_size=3584,
        num_layers=42,
        num_heads=16,
        num_kv_heads=8,
        intermediate_size=14336,
        layer_types=_every_nth_full(42, 2),
    ),
    "gemma3-1b": LlamaConfig(
        model_type="gemma3_text",
        vocab_size=262144,
        hidden_size=1152,
        num_layers=26,
        num_heads=4,
        num_kv_heads=1,
        head_dim=256,
        intermediate_size=6912,
        rope_theta=1_000_000.0,
        rope_local_theta=10_000.0,
        rms_norm_eps=1e-6,
        tie_embeddings=True,
        max_seq_len=32768,
        bos_token_id=2,
        eos_token_id=(1, 106),
        pad_token_id=0,
        qk_norm=True,
        sliding_window=512,
        layer_types=_every_nth_full(26, 6),
        query_pre_attn_scalar=256,
    ),
    "phi3-mini": LlamaConfig(  # Phi-3-mini-4k-instruct
        model_type="phi3",
        vocab_size=32064,
        hidden_size=3072,
        num_layers=32,
        num_heads=32,
        num_kv_heads=32,
        intermediate_size=8192,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        max_seq_len=4096,
        bos_token_id=1,
        eos_token_id=32000,
        pad_token_id=32000,
        sliding_window=2047,
    ),
}


# ----------------------------------------------------------------------------- pieces


class RMSNorm(nn.Module):
    """Hugging Face LlamaRMSNorm: normalise in fp32, cast back, then scale.

    ``plus_one`` is Gemma's: scale by (1 + w) in fp32, then cast (w is stored, initialised 0)."""

    eps: float = 1e-5
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    plus_one: bool = False

    @nn.compact
    def __call__(self, x_BxLxD):
        init = nn.initializers.zeros if self.plus_one else nn.initializers.ones
        scale_D = self.param("scale", init, (x_BxLxD.shape[-1],), self.param_dtype)
        x32 = x_BxLxD.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        if self.plus_one:
            return (x32 * (1.0 + scale_D.astype(jnp.float32))).astype(self.dtype)
        return scale_D.astype(self.dtype) * x32.astype(self.dtype)


def _norm(config: LlamaConfig, name: str | None = None) -> RMSNorm:
    c = config
    return RMSNorm(c.rms_norm_eps, c.dtype, c.param_dtype, c.norm_plus_one, name=name)


def _softcap(x, cap: float | None):
    """Gemma's cap * tanh(x / cap); None leaves x as it is."""
    return x if cap is None else cap * jnp.tanh(x / cap)


# The gate activations of the MLP (Hugging Face hidden_act names).
ACTIVATIONS = {"silu": nn.silu, "gelu_pytorch_tanh": lambda x: nn.gelu(x, approximate=True)}


def rope_inv_freq(config: LlamaConfig, local: bool = False) -> np.ndarray:
    """Rotary inverse frequencies (Q/2,), scaled when configured; `local`: those of sliding
    layers where they have their own base (Gemma 3), unscaled."""
    k = config.rotary_dim
    if local and config.rope_local_theta is not None:
        return (1.0 / (config.rope_local_theta ** (np.arange(0, k, 2) / k))).astype(np.float32)
    inv_freq = 1.0 / (config.rope_theta ** (np.arange(0, k, 2, dtype=np.float64) / k))
    rs = config.rope_scaling
    if rs is not None and rs.rope_type == "linear":
        inv_freq = inv_freq / rs.factor
    elif rs is not None:
        low_wavelen = rs.original_max_position_embeddings / rs.low_freq_factor
        high_wavelen = rs.original_max_position_embeddings / rs.high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = np.where(wavelen > low_wavelen, inv_freq / rs.factor, inv_freq)
        smooth = (rs.original_max_position_embeddings / wavelen - rs.low_freq_factor) / (
            rs.high_freq_factor - rs.low_freq_factor
        )
        smoothed = (1 - smooth) * scaled / rs.factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        inv_freq = np.where(medium, smoothed, scaled)
    return inv_freq.astype(np.float32)


def rope_sin_cos(positions_BxL, inv_freq_Q2):
    """sin/cos tables (B, L, 1, Q) in the rotate-half layout (halves repeated)."""
    angles_BxLxQ2 = positions_BxL.astype(jnp.float32)[..., None] * inv_freq_Q2
    angles_BxLxQ = jnp.concatenate([angles_BxLxQ2, angles_BxLxQ2], axis=-1)
    return jnp.sin(angles_BxLxQ)[:, :, None, :], jnp.cos(angles_BxLxQ)[:, :, None, :]


def apply_rope(x_BxLxHxK, sin_BxLx1xQ, cos_BxLx1xQ):
    """Hugging Face rotate-half RoPE: pairs dimension i with i + Q/2 among the first Q (the
    rest, when Q < K, pass through unrotated)."""
    Q = sin_BxLx1xQ.shape[-1]
    x32_BxLxHxQ = x_BxLxHxK[..., :Q].astype(jnp.float32)
    half = Q // 2
    rotated = jnp.concatenate([-x32_BxLxHxQ[..., half:], x32_BxLxHxQ[..., :half]], axis=-1)
    out = (x32_BxLxHxQ * cos_BxLx1xQ + rotated * sin_BxLx1xQ).astype(x_BxLxHxK.dtype)
    if Q == x_BxLxHxK.shape[-1]:
        return out
    return jnp.concatenate([out, x_BxLxHxK[..., Q:]], axis=-1)


def _dense(config: LlamaConfig, features: int, name: str | None = None, bias=False) -> nn.Dense:
    return nn.Dense(
        features,
        use_bias=bias,
        dtype=config.dtype,
        param_dtype=config.param_dtype,
        kernel_init=nn.initializers.normal(config.initializer_range),
        name=name,
    )


def _pick(pair, sliding):
    """pair[1] for a sliding layer, pair[0] for a full one (`sliding` may be traced)."""
    if pair[0] is pair[1]:
        return pair[0]
    if isinstance(sliding, bool):
        return pair[1] if sliding else pair[0]
    return jax.tree.map(lambda full, window: jnp.where(sliding, window, full), *pair)


class LlamaAttention(nn.Module):
    """Grouped-query attention writing into (and reading from) an optional KV cache."""

    config: LlamaConfig

    @nn.compact
    def __call__(self, x_BxLxD, ropes, masks, kv_cache, end, sliding):
        """`ropes`: the (full, sliding) layers' (sin, cos) tables (B, L, 1, K); `masks`: their
        masks (B, L, S); `sliding` picks, a Python bool, or a traced one per layer inside a
        scan (which only einsum can follow)."""
        c = self.config
        full_BxLxS = masks[0]
        mask_BxLxS = _pick(masks, sliding)
        sin_BxLx1xK, cos_BxLx1xK = _pick(ropes, sliding)
        B, L, _ = x_BxLxD.shape
        H, G, K = c.num_heads, c.num_kv_heads, c.head_dim
        if c.fused_proj:  # Phi-3: q, k, v side by side in one kernel
            qkv_BxLxE = _dense(c, (H + 2 * G) * K, "qkv_proj", c.qkv_bias)(x_BxLxD)
            q_BxLxE, k_BxLxE, v_BxLxE = jnp.split(qkv_BxLxE, [H * K, (H + G) * K], axis=-1)
        else:
            q_BxLxE = _dense(c, H * K, "q_proj", c.qkv_bias)(x_BxLxD)
            k_BxLxE = _dense(c, G * K, "k_proj", c.qkv_bias)(x_BxLxD)
            v_BxLxE = _dense(c, G * K, "v_proj", c.qkv_bias)(x_BxLxD)
        q_BxLxHxK = q_BxLxE.reshape(B, L, H, K)
        k_BxLxGxK = k_BxLxE.reshape(B, L, G, K)
        v_BxLxGxK = v_BxLxE.reshape(B, L, G, K)
        if c.qk_norm:
            q_BxLxHxK = _norm(c, "q_norm")(q_BxLxHxK)
            k_BxLxGxK = _norm(c, "k_norm")(k_BxLxGxK)
        q_BxLxHxK = apply_rope(q_BxLxHxK, sin_BxLx1xK, cos_BxLx1xK)
        k_BxLxGxK = apply_rope(k_BxLxGxK, sin_BxLx1xK, cos_BxLx1xK)

        if kv_cache is None:
            new_cache = None
            k_BxSxGxK, v_BxSxGxK = k_BxLxGxK, v_BxLxGxK
        else:
            k_cache, v_cache = kv_cache
            k_BxSxGxK = jax.lax.dynamic_update_slice(
                k_cache, k_BxLxGxK.astype(k_cache.dtype), (0, end, 0, 0)
            )
            v_BxSxGxK = jax.lax.dynamic_update_slice(
                v_cache, v_BxLxGxK.astype(v_cache.dtype), (0, end, 0, 0)
            )
            new_cache = (k_BxSxGxK, v_BxSxGxK)

        scale = (c.query_pre_attn_scalar or K) ** -0.5
        if kv_cache is None and c.attention != "einsum":
            if not isinstance(sliding, bool):
                raise ValueError(
                    f"attention={c.attention!r} cannot follow mixed sliding/full layers inside "
                    "scan_layers=True: use attention='einsum' or scan_layers=False"
                )
            # Query head h shares KV head h // (H // G) here too. Right padding: the last
            # query row's full causal mask is the row's key validity.
            lengths_B = full_BxLxS[:, -1, :].sum(-1, dtype=jnp.int32)
            out_BxLxHxK = jax.nn.dot_product_attention(
                q_BxLxHxK.astype(c.dtype),
                k_BxLxGxK.astype(c.dtype),
                v_BxLxGxK.astype(c.dtype),
                is_causal=True,
                key_value_seq_lengths=lengths_B,
                local_window_size=(c.sliding_window - 1, 0) if sliding else None,
                scale=scale,
                implementation=c.attention,
            )
            out_BxLxD = _dense(c, c.hidden_size, "o_proj", c.o_bias)(
                out_BxLxHxK.reshape(B, L, H * K)
            )
            return out_BxLxD, None

        # Query head h = g * R + r shares KV head g (Hugging Face repeat_kv order).
        R = H // G
        q_BxLxGxRxK = q_BxLxHxK.reshape(B, L, G, R, K)
        scores_BxGxRxLxS = jnp.einsum(
            "blgrk,bsgk->bgrls", q_BxLxGxRxK, k_BxSxGxK.astype(c.dtype)
        ).astype(jnp.float32)
        scores_BxGxRxLxS = _softcap(scores_BxGxRxLxS * scale, c.attn_softcap)
        scores_BxGxRxLxS = jnp.where(mask_BxLxS[:, None, None, :, :], scores_BxGxRxLxS, _MASK_VALUE)
        probs_BxGxRxLxS = jax.nn.softmax(scores_BxGxRxLxS, axis=-1).astype(c.dtype)
        out_BxLxGxRxK = jnp.einsum("bgrls,bsgk->blgrk", probs_BxGxRxLxS, v_BxSxGxK.astype(c.dtype))
        out_BxLxD = _dense(c, c.hidden_size, "o_proj", c.o_bias)(out_BxLxGxRxK.reshape(B, L, H * K))
        return out_BxLxD, new_cache


class LlamaMLP(nn.Module):
    """Gated feed-forward: down(act(gate(x)) * up(x)); SwiGLU, or GeGLU (Gemma); gate and up
    fused in one kernel, gate first (Phi-3)."""

    config: LlamaConfig

    @nn.compact
    def __call__(self, x_BxLxD):
        c = self.config
        F = c.intermediate_size
        if c.fused_proj:
            gate_up_BxLx2F = _dense(c, 2 * F, "gate_up_proj")(x_BxLxD)
            gate_BxLxF, up_BxLxF = gate_up_BxLx2F[..., :F], gate_up_BxLx2F[..., F:]
        else:
            gate_BxLxF = _dense(c, F, "gate_proj")(x_BxLxD)
            up_BxLxF = _dense(c, F, "up_proj")(x_BxLxD)
        act = ACTIVATIONS[c.hidden_act]
        return _dense(c, c.hidden_size, "down_proj")(act(gate_BxLxF) * up_BxLxF)


class LlamaDecoderLayer(nn.Module):
    """Pre-norm block (Gemma's sandwich: outputs normed too before each residual add);
    signature ``(carry, *xs) -> (carry, ys)`` so nn.scan can stack it.

    `sliding` is this layer's attention type when it is known statically; None takes it from
    the scanned `sliding_flag` (scanned layers of mixed types)."""

    config: LlamaConfig
    sliding: bool | None = False

    @nn.compact
    def __call__(self, x_BxLxD, kv_cache, ropes, masks, end, sliding_flag):
        c = self.config
        h_BxLxD = _norm(c, "input_layernorm")(x_BxLxD)
        sliding = sliding_flag if self.sliding is None else self.sliding
        attn_BxLxD, new_cache = LlamaAttention(c, name="self_attn")(
            h_BxLxD, ropes, masks, kv_cache, end, sliding
        )
        mlp = LlamaMLP(c, name="mlp")
        if c.sandwich_norms:  # Gemma's post_attention_layernorm norms the attention output
            x_BxLxD = x_BxLxD + _norm(c, "post_attention_layernorm")(attn_BxLxD)
            h_BxLxD = _norm(c, "pre_feedforward_layernorm")(x_BxLxD)
            return x_BxLxD + _norm(c, "post_feedforward_layernorm")(mlp(h_BxLxD)), new_cache
        x_BxLxD = x_BxLxD + attn_BxLxD
        h_BxLxD = _norm(c, "post_attention_layernorm")(x_BxLxD)
        return x_BxLxD + mlp(h_BxLxD), new_cache


# ----------------------------------------------------------------------------- cache


def init_cache(config: LlamaConfig, batch_size: int, max_len: int, dtype=None) -> dict:
    """An empty KV cache of ``max_len`` slots per sequence.

    ``k``/``v`` are stacked ``(N, B, S, G, K)`` arrays for scanned layers and
    tuples of ``(B, S, G, K)`` arrays otherwise (so unscanned layers update their
    own buffer in place). ``mask`` marks the slots holding real tokens (left
    padding stays masked forever) and ``end`` is the next slot to write, shared
    by all rows. Writing past ``max_len`` is not checked under jit: size it for
    prompt plus new tokens.
    """
    dtype = config.dtype if dtype is None else _as_dtype(dtype)
    shape = (batch_size, max_len, config.num_kv_heads, config.head_dim)
    if config.scan_layers:
        k = jnp.zeros((config.num_layers, *shape), dtype)
        v = jnp.zeros((config.num_layers, *shape), dtype)
    else:
        k = tuple(jnp.zeros(shape, dtype) for _ in range(config.num_layers))
        v = tuple(jnp.zeros(shape, dtype) for _ in range(config.num_layers))
    return {
        "k": k,
        "v": v,
        "mask": jnp.zeros((batch_size, max_len), jnp.bool_),
        "end": jnp.zeros((), jnp.int32),
    }


def default_positions(attention_mask_BxL, cache=None):
    """Positions that skip padding: real tokens count 0, 1, ... per row (pads get 0)."""
    mask_BxL = attention_mask_BxL.astype(jnp.int32)
    start_B = 0 if cache is None else jnp.sum(cache["mask"], axis=-1, dtype=jnp.int32)
    positions_BxL = jnp.cumsum(mask_BxL, axis=-1) - 1
    positions_BxL = positions_BxL + (start_B if cache is None else start_B[:, None])
    return jnp.where(mask_BxL > 0, positions_BxL, 0)


# ----------------------------------------------------------------------------- model


class LlamaForCausalLM(nn.Module):
    """Decoder-only LM. ``__call__`` returns ``(logits_BxLxV float32, new_cache)``.

    Without a cache the call is a plain causal forward over ``input_ids``; with
    one (from ``init_cache``) the new tokens are written at ``cache['end']`` and
    attend to every valid earlier slot. LLaMA has no dropout, so ``deterministic``
    is accepted only for a uniform model API.
    """

    config: LlamaConfig

    def setup(self):
        c = self.config
        self.embed_tokens = nn.Embed(
            c.vocab_size,
            c.hidden_size,
            dtype=c.dtype,
            param_dtype=c.param_dtype,
            embedding_init=nn.initializers.normal(c.initializer_range),
        )
        block = LlamaDecoderLayer
        policy = REMAT_POLICIES[c.remat]
        if c.remat != "none":
            block = nn.remat(block, policy=policy, prevent_cse=not c.scan_layers)
        kinds = c.sliding_layers()
        if c.scan_layers:
            block = nn.scan(
                block,
                variable_axes={"params": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, 0),
                length=c.num_layers,
            )
            self.layers = block(c, kinds[0] if len(set(kinds)) == 1 else None)
        else:
            # setup names list entries layers_0, layers_1, ...
            self.layers = [block(c, kind) for kind in kinds]
        self.norm = _norm(c)
        if not c.tie_embeddings:
            self.lm_head = _dense(c, c.vocab_size)

    def __call__(
        self,
        input_ids_BxL,
        attention_mask_BxL=None,
        positions_BxL=None,
        cache=None,
        deterministic: bool = True,
    ):
        del deterministic  # no dropout in LLaMA
        c = self.config
        B, L = input_ids_BxL.shape
        if attention_mask_BxL is None:
            attention_mask_BxL = jnp.ones((B, L), jnp.bool_)
        valid_BxL = attention_mask_BxL.astype(jnp.bool_)
        if positions_BxL is None:
            positions_BxL = default_positions(valid_BxL, cache)

        if cache is None:
            end = jnp.zeros((), jnp.int32)
            key_valid_BxS = valid_BxL
            causal_LxS = jnp.tril(jnp.ones((L, L), jnp.bool_))
            new_mask = None
        else:
            end = cache["end"]
            key_valid_BxS = jax.lax.dynamic_update_slice(cache["mask"], valid_BxL, (0, end))
            S = key_valid_BxS.shape[1]
            causal_LxS = jnp.arange(S)[None, :] <= end + jnp.arange(L)[:, None]
            new_mask = key_valid_BxS
        mask_BxLxS = key_valid_BxS[:, None, :] & causal_LxS[None, :, :]
        masks = (mask_BxLxS, mask_BxLxS)
        if c.sliding_window is not None:
            # Slots, not positions: a row's real tokens are contiguous (padding only leads or
            # trails), so slot distance is token distance, as in transformers' masks.
            S = key_valid_BxS.shape[1]
            q_slots_L = jnp.arange(L) + (0 if cache is None else end)
            near_LxS = jnp.arange(S)[None, :] > q_slots_L[:, None] - c.sliding_window
            masks = (mask_BxLxS, mask_BxLxS & near_LxS[None, :, :])

        rope = rope_sin_cos(positions_BxL, jnp.asarray(rope_inv_freq(c)))
        ropes = (rope, rope)
        if c.rope_local_theta is not None:
            ropes = (rope, rope_sin_cos(positions_BxL, jnp.asarray(rope_inv_freq(c, local=True))))
        x_BxLxD = self.embed_tokens(input_ids_BxL)
        if c.scale_embeddings:  # the factor rounded to the compute dtype, as transformers does
            x_BxLxD = x_BxLxD * jnp.asarray(math.sqrt(c.hidden_size), c.dtype)

        if c.scan_layers:
            kv = None if cache is None else (cache["k"], cache["v"])
            flags_N = jnp.asarray(c.sliding_layers())
            x_BxLxD, kv = self.layers(x_BxLxD, kv, ropes, masks, end, flags_N)
            new_k, new_v = (None, None) if kv is None else kv
        else:
            new_k, new_v = [], []
            for i, layer in enumerate(self.layers):
                kv = None if cache is None else (cache["k"][i], cache["v"][i])
                x_BxLxD, kv = layer(x_BxLxD, kv, ropes, masks, end, None)
                if kv is not None:
                    new_k.append(kv[0])
                    new_v.append(kv[1])
            new_k, new_v = tuple(new_k), tuple(new_v)

        x_BxLxD = self.norm(x_BxLxD)
        if c.tie_embeddings:
            logits_BxLxV = self.embed_tokens.attend(x_BxLxD)
        else:
            logits_BxLxV = self.lm_head(x_BxLxD)
        logits_BxLxV = _softcap(logits_BxLxV.astype(jnp.float32), c.final_softcap)

        if cache is None:
            return logits_BxLxV, None
        new_cache = {"k": new_k, "v": new_v, "mask": new_mask, "end": end + L}
        return logits_BxLxV, new_cache

    def init_cache(self, batch_size: int, max_len: int, dtype=None) -> dict:
        return init_cache(self.config, batch_size, max_len, dtype)


def abstract_params(config: LlamaConfig):
    """Shapes/dtypes of the ``params`` collection, computed without allocating weights."""
    ids_1x1 = jnp.zeros((1, 1), jnp.int32)
    return jax.eval_shape(LlamaForCausalLM(config).init, jax.random.key(0), ids_1x1)["params"]


# ----------------------------------------------------------------------------- HF names

_LAYER_RE = re.compile(r"model\.layers\.(\d+)\.(.+)")
_LAYER_NAMES = {
    f"{module}.{kind}": (*module.split("."), leaf)
    for module in (
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.qkv_proj",
        "self_attn.o_proj",
        "mlp.gate_proj",
        "mlp.up_proj",
        "mlp.gate_up_proj",
        "mlp.down_proj",
    )
    for kind, leaf in (("weight", "kernel"), ("bias", "bias"))
} | {
    f"{norm}.weight": (*norm.split("."), "scale")
    for norm in (
        "input_layernorm",
        "post_attention_layernorm",
        "pre_feedforward_layernorm",
        "post_feedforward_layernorm",
        "self_attn.q_norm",
        "self_attn.k_norm",
    )
}
_TOP_NAMES = {
    "model.embed_tokens.weight": ("embed_tokens", "embedding"),
    "model.norm.weight": ("norm", "scale"),
    "lm_head.weight": ("lm_head", "kernel"),
}


def _transpose(w: np.ndarray) -> np.ndarray:
    return np.asarray(w).T


def _layer_names(config: LlamaConfig) -> set[str]:
    """The per-layer tensor names a checkpoint of this config holds."""
    qkv = ("qkv",) if config.fused_proj else ("q", "k", "v")
    names = {f"self_attn.{p}_proj.weight" for p in (*qkv, "o")}
    gate_up = ("gate_up",) if config.fused_proj else ("gate", "up")
    names |= {f"mlp.{p}_proj.weight" for p in (*gate_up, "down")}
    names |= {"input_layernorm.weight", "post_attention_layernorm.weight"}
    if config.sandwich_norms:
        names |= {"pre_feedforward_layernorm.weight", "post_feedforward_layernorm.weight"}
    if config.qkv_bias:
        names |= {f"self_attn.{p}_proj.bias" for p in qkv}
    if config.o_bias:
        names.add("self_attn.o_proj.bias")
    if config.qk_norm:
        names |= {"self_attn.q_norm.weight", "self_attn.k_norm.weight"}
    return names


def hf_rename(config: LlamaConfig):
    """HF safetensors name -> (morejax path, layer index, transform), for weights.load_params.

    torch stores Linear weights ``[out, in]``; Flax kernels are ``(in, out)``.
    Rotary ``inv_freq`` buffers and a tied ``lm_head.weight`` are ignored.
    """

    names = _layer_names(config)

    def rename(name: str):
        if name.endswith("rotary_emb.inv_freq"):
            return None
        m = _LAYER_RE.fullmatch(name)
        if m is not None:
            i, sub = int(m.group(1)), m.group(2)
            if sub not in names:
                raise KeyError(name)
            rest = _LAYER_NAMES[sub]
            transform = _transpose if rest[-1] == "kernel" else None
            if config.scan_layers:
                return ("layers", *rest), i, transform
            return (f"layers_{i}", *rest), None, transform
        if name == "lm_head.weight" and config.tie_embeddings:
            return None
        if name in _TOP_NAMES:
            path = _TOP_NAMES[name]
            return path, None, _transpose if path[-1] == "kernel" else None
        raise KeyError(name)

    return rename


def hf_inverse_rename(config: LlamaConfig):
    """morejax path -> [(HF name, layer index, transform)], for weights.save_safetensors."""
    top = {v: k for k, v in _TOP_NAMES.items()}
    layer = {v: k for k, v in _LAYER_NAMES.items()}

    def inverse(path: tuple[str, ...]) -> Iterable[tuple[str, int | None, Callable | None]]:
        path = tuple(path)
        if path in top:
            return [(top[path], None, _transpose if path[-1] == "kernel" else None)]
        head, rest = path[0], path[1:]
        if rest not in layer:
            raise KeyError(f"no Hugging Face name for {'/'.join(path)}")
        transform = _transpose if rest[-1] == "kernel" else None
        sub = layer[rest]
        if config.scan_layers and head == "layers":
            return [(f"model.layers.{i}.{sub}", i, transform) for i in range(config.num_layers)]
        m = re.fullmatch(r"layers_(\d+)", head)
        if m is None:
            raise KeyError(f"no Hugging Face name for {'/'.join(path)}")
        return [(f"model.layers.{m.group(1)}.{sub}", None, transform)]

    return inverse


def load_hf_checkpoint(path, config: LlamaConfig | None = None, *, unknown="warn", **overrides):
    """(config, params) from a Hugging Face LLaMA checkpoint dir (or file plus ``config``).

    ``overrides`` replace config fields (e.g. ``scan_layers=True``, ``dtype=...``);
    params are stored in ``config.param_dtype`` whatever the checkpoint holds.
    """
    from morejax.models import weights

    path = Path(path)
    if config is None:
        config_file = path / "config.json"
        if not config_file.is_file():
            raise FileNotFoundError(f"{config_file} not found; pass config= explicitly")
        config = LlamaConfig.from_hf_config(json.loads(config_file.read_text()))
    if overrides:
        config = config.replace(**overrides)
    params = weights.load_params(
        abstract_params(config),
        weights.safetensors_tensors(path),
        hf_rename(config),
        unknown=unknown,
    )
    return config, params


def save_hf_checkpoint(params, config: LlamaConfig, path, *, max_shard_bytes=None):
    """Writes ``config.json`` plus safetensors in Hugging Face layout (sharded if asked)."""
    from morejax.models import weights

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config.to_hf_config(), indent=2))
    return weights.save_safetensors(
        params, path, hf_inverse_rename(config), max_shard_bytes=max_shard_bytes
    )
