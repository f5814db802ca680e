"""BERT / RoBERTa / MiniLM encoders in Linen, with Hugging Face parameter names.

Every projection is an ``nn.Dense`` named as in Hugging Face so adapter rules and
checkpoint mappings read the same as in PyTorch code. Params of every model in
this file share one layout: ``embeddings/...``, ``encoder/layers_{i}/...`` (or
``encoder/layers/...`` stacked when ``scan_layers``) and, for task models,
``head/...``; so a pretrained encoder loads into any of them unchanged.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "BertConfig",
    "CONFIGS",
    "BertEncoder",
    "BertForSequenceClassification",
    "BertForSentenceEmbedding",
    "BertClassificationHead",
    "MODELS",
    "position_ids",
    "hf_rename",
    "hf_inverse_rename",
    "REMAT_POLICIES",
]

# Name -> jax.checkpoint policy; 'full' saves nothing (recompute the whole layer).
REMAT_POLICIES: dict[str, Callable | None] = {
    "full": None,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "everything": jax.checkpoint_policies.everything_saveable,
}

_ACTIVATIONS = {
    "gelu": lambda x: nn.gelu(x, approximate=False),  # BERT's erf GELU
    "gelu_new": lambda x: nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: nn.gelu(x, approximate=True),
    "relu": nn.relu,
}


@dataclasses.dataclass(frozen=True)
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    pad_token_id: int = 0
    # 0: positions are 0..L-1 (BERT). >0: RoBERTa's scheme, where non-pad tokens
    # count from `position_offset` (= padding_idx + 1) and pads sit at offset - 1.
    position_offset: int = 0
    hidden_act: str = "gelu"
    initializer_range: float = 0.02
    model_type: str = "bert"
    dtype: Any = "float32"
    param_dtype: Any = "float32"
    scan_layers: bool = False
    remat: str = "none"
    num_labels: int = 2
    # The classifier reads one token per example, so its last layer need only run there
    # (keys and values still over every token): ~10/12 of that layer's FLOPs saved.
    cls_only_last_layer: bool = False

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} not divisible by {self.num_heads}")
        if self.remat != "none" and self.remat not in REMAT_POLICIES:
            raise ValueError(f"remat must be 'none' or one of {sorted(REMAT_POLICIES)}")
        if self.cls_only_last_layer and self.scan_layers:
            raise ValueError(
                "cls_only_last_layer runs the last layer apart from the others, which a "
                "scanned stack cannot; set scan_layers=False or cls_only_last_layer=False"
            )
        if self.hidden_act not in _ACTIVATIONS:
            raise ValueError(f"hidden_act {self.hidden_act!r} not in {sorted(_ACTIVATIONS)}")
        # dtype names keep the config printable/hashable; normalise jnp types to names.
        for f in ("dtype", "param_dtype"):
            object.__setattr__(self, f, jnp.dtype(getattr(self, f)).name)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def is_regression(self) -> bool:
        return self.num_labels == 1

    def replace(self, **kw) -> BertConfig:
        return dataclasses.replace(self, **kw)

    @classmethod
    def from_hf_config(cls, hf: dict, **overrides) -> BertConfig:
        """Reads a Hugging Face ``config.json`` dict (BERT, RoBERTa, MiniLM)."""
        if hf.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(
                f"position_embedding_type {hf['position_embedding_type']!r} is not supported"
            )
        model_type = hf.get("model_type", "bert")
        pad = hf.get("pad_token_id", 0 if model_type == "bert" else 1)
        pad = 0 if pad is None else pad
        roberta = model_type in ("roberta", "xlm-roberta", "camembert")
        kw = dict(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=hf["num_attention_heads"],
            intermediate_size=hf["intermediate_size"],
            max_position_embeddings=hf.get("max_position_embeddings", 512),
            type_vocab_size=hf.get("type_vocab_size", 2),
            layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
            hidden_dropout=hf.get("hidden_dropout_prob", 0.1),
            attention_dropout=hf.get("attention_probs_dropout_prob", 0.1),
            pad_token_id=pad,
            position_offset=pad + 1 if roberta else 0,
            hidden_act=hf.get("hidden_act", "gelu"),
            initializer_range=hf.get("initializer_range", 0.02),
            model_type="roberta" if roberta else "bert",
        )
        if "id2label" in hf:
            kw["num_labels"] = len(hf["id2label"])
        elif "num_labels" in hf:
            kw["num_labels"] = hf["num_labels"]
        kw.update(overrides)
        return cls(**kw)

    def to_hf_config(self) -> dict:
        """The ``config.json`` dict that goes with an exported checkpoint."""
        roberta = self.model_type == "roberta"
        return {
            "architectures": ["RobertaModel" if roberta else "BertModel"],
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "intermediate_size": self.intermediate_size,
            "max_position_embeddings": self.max_position_embeddings,
            "type_vocab_size": self.type_vocab_size,
            "layer_norm_eps": self.layer_norm_eps,
            "hidden_dropout_prob": self.hidden_dropout,
            "attention_probs_dropout_prob": self.attention_dropout,
            "pad_token_id": self.pad_token_id,
            "hidden_act": self.hidden_act,
            "initializer_range": self.initializer_range,
            "position_embedding_type": "absolute",
            "id2label": {str(i): f"LABEL_{i}" for i in range(self.num_labels)},
        }


_ROBERTA = dict(
    vocab_size=50265,
    max_position_embeddings=514,
    type_vocab_size=1,
    layer_norm_eps=1e-5,
    pad_token_id=1,
    position_offset=2,
    model_type="roberta",
)

# Paper-scale shapes, enough for parameter tables via jax.eval_shape.
CONFIGS: dict[str, BertConfig] = {
    "bert-base": BertConfig(),
    "bert-large": BertConfig(hidden_size=1024, num_layers=24, num_heads=16, intermediate_size=4096),
    "roberta-base": BertConfig(**_ROBERTA),
    "roberta-large": BertConfig(
        hidden_size=1024, num_layers=24, num_heads=16, intermediate_size=4096, **_ROBERTA
    ),
    "minilm-l6": BertConfig(hidden_size=384, num_layers=6, num_heads=12, intermediate_size=1536),
    "minilm-l12": BertConfig(hidden_size=384, num_layers=12, num_heads=12, intermediate_size=1536),
}


def position_ids(input_ids_BxL: jax.Array, config: BertConfig, packed_BxL=None) -> jax.Array:
    """BERT counts 0..L-1; RoBERTa counts non-pad tokens from the offset, as HF does.
    Packed rows give each token's place in its own example (``packed_BxL``)."""
    L = input_ids_BxL.shape[-1]
    if packed_BxL is not None:
        return jnp.asarray(packed_BxL, jnp.int32) + config.position_offset
    if config.position_offset == 0:
        return jnp.broadcast_to(jnp.arange(L, dtype=jnp.int32), input_ids_BxL.shape)
    real_BxL = (input_ids_BxL != config.pad_token_id).astype(jnp.int32)
    count_BxL = jnp.cumsum(real_BxL, axis=-1) * real_BxL
    return count_BxL + (config.position_offset - 1)


def _dense(config: BertConfig, features: int, name: str) -> nn.Dense:
    return nn.Dense(
        features,
        dtype=config.dtype,
        param_dtype=config.param_dtype,
        kernel_init=nn.initializers.normal(config.initializer_range),
        name=name,
    )


def _layer_norm(config: BertConfig, name: str = "LayerNorm") -> nn.LayerNorm:
    return nn.LayerNorm(
        epsilon=config.layer_norm_eps, dtype=config.dtype, param_dtype=config.param_dtype, name=name
    )


class BertEmbeddings(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, input_ids_BxL, token_type_ids_BxL, deterministic: bool, pos_BxL=None):
        c = self.config
        init = nn.initializers.normal(c.initializer_range)

        def embed(n, name):
            return nn.Embed(n, c.hidden_size, c.dtype, c.param_dtype, init, name=name)

        pos_BxL = position_ids(input_ids_BxL, c, pos_BxL)
        x_BxLxD = embed(c.vocab_size, "word_embeddings")(input_ids_BxL)
        x_BxLxD = x_BxLxD + embed(c.max_position_embeddings, "position_embeddings")(pos_BxL)
        x_BxLxD = x_BxLxD + embed(c.type_vocab_size, "token_type_embeddings")(token_type_ids_BxL)
        x_BxLxD = _layer_norm(c)(x_BxLxD)
        return nn.Dropout(c.hidden_dropout)(x_BxLxD, deterministic=deterministic)


class BertSelfAttention(nn.Module):
    """HF splits attention into `self` and `output`; morejax keeps `attention/{query,..}`."""

    config: BertConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x_NxLxD, bias_Bx1xQxL, xq_BxQxD=None, rows_B=None):
        """Queries at ``xq_BxQxD`` (default: every token of ``x``) over the keys of row
        ``rows_B`` of ``x`` (default: the same row): the classifier's tokens alone can
        attend to their rows with every row's keys and values computed once."""
        c = self.config
        xq_BxQxD = x_NxLxD if xq_BxQxD is None else xq_BxQxD
        H, K = c.num_heads, c.head_dim

        def heads(name, x_BxNxD):
            return _dense(c, c.hidden_size, name)(x_BxNxD).reshape(*x_BxNxD.shape[:2], H, K)

        q_BxQxHxK = heads("query", xq_BxQxD)
        k_BxLxHxK, v_BxLxHxK = heads("key", x_NxLxD), heads("value", x_NxLxD)
        if rows_B is not None:
            k_BxLxHxK, v_BxLxHxK = k_BxLxHxK[rows_B], v_BxLxHxK[rows_B]
        scores_BxHxQxL = jnp.einsum("bqhk,blhk->bhql", q_BxQxHxK, k_BxLxHxK)
        # Softmax in float32: bf16 logits lose the mask's large negative bias.
        scores_BxHxQxL = scores_BxHxQxL.astype(jnp.float32) / math.sqrt(K) + bias_Bx1xQxL
        probs_BxHxQxL = jax.nn.softmax(scores_BxHxQxL, axis=-1).astype(c.dtype)
        probs_BxHxQxL = nn.Dropout(c.attention_dropout)(
            probs_BxHxQxL, deterministic=self.deterministic
        )
        ctx_BxQxHxK = jnp.einsum("bhql,blhk->bqhk", probs_BxHxQxL, v_BxLxHxK)
        ctx_BxQxD = ctx_BxQxHxK.reshape(*xq_BxQxD.shape[:2], c.hidden_size)
        return BertOutput(c, self.deterministic, name="output")(ctx_BxQxD, xq_BxQxD)


class BertOutput(nn.Module):
    """dense -> dropout -> LayerNorm(residual + .): the post-LN block end."""

    config: BertConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, h_BxLxF, residual_BxLxD):
        c = self.config
        y_BxLxD = _dense(c, c.hidden_size, "dense")(h_BxLxF)
        y_BxLxD = nn.Dropout(c.hidden_dropout)(y_BxLxD, deterministic=self.deterministic)
        return _layer_norm(c)(y_BxLxD + residual_BxLxD)


class BertIntermediate(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, x_BxLxD):
        c = self.config
        return _ACTIVATIONS[c.hidden_act](_dense(c, c.intermediate_size, "dense")(x_BxLxD))


class BertLayer(nn.Module):
    """One post-LN block; returns (carry, None) so nn.scan can stack it."""

    config: BertConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x_NxLxD, bias_Bx1xQxL, xq_BxQxD=None, rows_B=None):
        c = self.config
        attention = BertSelfAttention(c, self.deterministic, name="attention")
        a_BxQxD = attention(x_NxLxD, bias_Bx1xQxL, xq_BxQxD, rows_B)
        h_BxQxF = BertIntermediate(c, name="intermediate")(a_BxQxD)
        y_BxQxD = BertOutput(c, self.deterministic, name="output")(h_BxQxF, a_BxQxD)
        return y_BxQxD, None


class BertLayerStack(nn.Module):
    config: BertConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x_BxLxD, bias_Bx1x1xL, last_queries=None):
        """``last_queries`` ``(rows_M, at_M, bias_Mx1x1xL)`` (`_cls_queries`; rows None: token
        0 of every row): the last layer runs only at those M tokens, returned ``(M, 1, D)``."""
        c = self.config
        layer = BertLayer
        if c.remat != "none":
            # prevent_cse is only needed outside scan (scan already blocks CSE).
            layer = nn.remat(layer, policy=REMAT_POLICIES[c.remat], prevent_cse=not c.scan_layers)
        if c.scan_layers:
            stack = nn.scan(
                layer,
                variable_axes={"params": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=(nn.broadcast,),
                length=c.num_layers,
            )
            x_BxLxD, _ = stack(c, self.deterministic, name="layers")(x_BxLxD, bias_Bx1x1xL)
        else:
            last = c.num_layers - 1 if last_queries is not None else c.num_layers
            for i in range(last):
                x_BxLxD, _ = layer(c, self.deterministic, name=f"layers_{i}")(x_BxLxD, bias_Bx1x1xL)
            if last_queries is not None:
                rows_M, at_M, bias_Mx1x1xL = last_queries
                xq_Mx1xD = x_BxLxD[:, :1] if rows_M is None else x_BxLxD[rows_M, at_M][:, None]
                x_Mx1xD, _ = layer(c, self.deterministic, name=f"layers_{last}")(
                    x_BxLxD, bias_Mx1x1xL, xq_Mx1xD, rows_M
                )
                return x_Mx1xD
        return x_BxLxD


def _cls_queries(bias_Bx1x1xL, segment_ids_BxL, cls_index_GxS):
    """The classifier's tokens as (row, position) and what each attends to: token 0 of each
    row, or for packed rows each example's first token over its own segment of its row."""
    if cls_index_GxS is None:  # row b's token 0 over row b: no gather needed
        return None, None, bias_Bx1x1xL[:, :, :1]  # a packed bias is (B, 1, L, L)
    B, L = bias_Bx1x1xL.shape[0], bias_Bx1x1xL.shape[-1]
    index_GxS = jnp.asarray(cls_index_GxS, jnp.int32)  # within a group's flattened rows
    G = index_GxS.shape[0]
    first_row_Gx1 = (jnp.arange(G) * (B // G))[:, None]
    rows_M = (first_row_Gx1 + index_GxS // L).reshape(-1)
    at_M = (index_GxS % L).reshape(-1)
    seg_BxL = jnp.asarray(segment_ids_BxL, jnp.int32)
    same_MxL = seg_BxL[rows_M] == seg_BxL[rows_M, at_M][:, None]
    bias_MxL = jnp.where(same_MxL, 0.0, jnp.finfo(jnp.float32).min).astype(jnp.float32)
    return rows_M, at_M, bias_MxL[:, None, None, :]


def _encode(
    module: nn.Module,
    input_ids_BxL,
    attention_mask_BxL,
    token_type_ids_BxL,
    det,
    segment_ids_BxL=None,
    position_ids_BxL=None,
    cls_index_GxS=None,
    cls_only=False,
):
    """Builds `embeddings` and `encoder` directly under the calling module's scope.

    Packed rows (``segment_ids_BxL``: 1, 2, .. per example, 0 on padding) attend only
    within their own example, so each example is encoded exactly as if alone.
    ``cls_only``: the last layer runs only at the classifier's tokens (`_cls_queries`).
    """
    c = module.config
    input_ids_BxL = jnp.asarray(input_ids_BxL, jnp.int32)
    if attention_mask_BxL is None:
        attention_mask_BxL = jnp.ones_like(input_ids_BxL)
    if token_type_ids_BxL is None:
        token_type_ids_BxL = jnp.zeros_like(input_ids_BxL)
    if segment_ids_BxL is None:
        keep_Bx1x1xL = jnp.asarray(attention_mask_BxL)[:, None, None, :] > 0
    else:
        seg_BxL = jnp.asarray(segment_ids_BxL, jnp.int32)
        keep_Bx1x1xL = seg_BxL[:, None, :, None] == seg_BxL[:, None, None, :]  # (B, 1, L, L)
    bias_Bx1x1xL = jnp.where(keep_Bx1x1xL, 0.0, jnp.finfo(jnp.float32).min).astype(jnp.float32)
    x_BxLxD = BertEmbeddings(c, name="embeddings")(
        input_ids_BxL, jnp.asarray(token_type_ids_BxL, jnp.int32), det, position_ids_BxL
    )
    last_queries = None
    if cls_only:
        last_queries = _cls_queries(bias_Bx1x1xL, segment_ids_BxL, cls_index_GxS)
    x_BxLxD = BertLayerStack(c, det, name="encoder")(x_BxLxD, bias_Bx1x1xL, last_queries)
    return x_BxLxD, attention_mask_BxL


class BertEncoder(nn.Module):
    """Returns the last hidden states (B, L, D) in the compute dtype."""

    config: BertConfig

    @nn.compact
    def __call__(
        self, input_ids_BxL, attention_mask_BxL=None, token_type_ids_BxL=None, deterministic=True
    ):
        x_BxLxD, _ = _encode(
            self, input_ids_BxL, attention_mask_BxL, token_type_ids_BxL, deterministic
        )
        return x_BxLxD


class BertClassificationHead(nn.Module):
    """[CLS] -> dense+tanh (BERT's pooler / RoBERTa's head dense) -> out_proj.

    A standalone module so a fresh head can be initialised without the encoder.
    """

    config: BertConfig

    @nn.compact
    def __call__(self, x_BxLxD, deterministic=True):
        c = self.config
        drop = nn.Dropout(c.hidden_dropout)
        cls_BxD = x_BxLxD[:, 0]
        h_BxD = jnp.tanh(_dense(c, c.hidden_size, "dense")(drop(cls_BxD, deterministic)))
        logits_BxC = _dense(c, c.num_labels, "out_proj")(drop(h_BxD, deterministic))
        return logits_BxC.astype(jnp.float32)


class BertForSequenceClassification(nn.Module):
    """GLUE-style classifier: logits (B, num_labels); regression (num_labels == 1) -> (B,)."""

    config: BertConfig

    @nn.compact
    def __call__(
        self,
        input_ids_BxL,
        attention_mask_BxL=None,
        token_type_ids_BxL=None,
        deterministic=True,
        segment_ids_BxL=None,
        position_ids_BxL=None,
        cls_index_GxS=None,
    ):
        """Packed rows (see `data.packing.PackedEncoderCollator`) give one output per
        example, ``G * S`` of them, taken at ``cls_index_GxS`` within each group's rows."""
        x_BxLxD, _ = _encode(
            self,
            input_ids_BxL,
            attention_mask_BxL,
            token_type_ids_BxL,
            deterministic,
            segment_ids_BxL,
            position_ids_BxL,
            cls_index_GxS,
            self.config.cls_only_last_layer,
        )
        if cls_index_GxS is not None and not self.config.cls_only_last_layer:
            G, S = cls_index_GxS.shape
            x_GxTxD = x_BxLxD.reshape(G, -1, x_BxLxD.shape[-1])  # a group's rows, flattened
            idx_GxSx1 = jnp.asarray(cls_index_GxS, jnp.int32)[..., None]
            x_BxLxD = jnp.take_along_axis(x_GxTxD, idx_GxSx1, axis=1).reshape(G * S, 1, -1)
        logits_BxC = BertClassificationHead(self.config, name="head")(x_BxLxD, deterministic)
        return logits_BxC[:, 0] if self.config.is_regression else logits_BxC


class BertForSentenceEmbedding(nn.Module):
    """Mean over real tokens (sentence-transformers' pooling), float32 (B, D)."""

    config: BertConfig
    normalize: bool = True

    @nn.compact
    def __call__(
        self, input_ids_BxL, attention_mask_BxL=None, token_type_ids_BxL=None, deterministic=True
    ):
        x_BxLxD, mask_BxL = _encode(
            self, input_ids_BxL, attention_mask_BxL, token_type_ids_BxL, deterministic
        )
        m_BxLx1 = jnp.asarray(mask_BxL, jnp.float32)[..., None]
        sum_BxD = jnp.sum(x_BxLxD.astype(jnp.float32) * m_BxLx1, axis=1)
        emb_BxD = sum_BxD / jnp.maximum(jnp.sum(m_BxLx1, axis=1), 1e-9)
        if self.normalize:
            emb_BxD = emb_BxD / jnp.maximum(jnp.linalg.norm(emb_BxD, axis=-1, keepdims=True), 1e-12)
        return emb_BxD


MODELS = {
    None: BertEncoder,
    "encoder": BertEncoder,
    "classification": BertForSequenceClassification,
    "embedding": BertForSentenceEmbedding,
}


# --------------------------------------------------------------------------- HF names

_T = np.transpose  # torch Linear stores [out, in]; Flax Dense wants (in, out)

# HF sub-name inside a layer -> morejax path inside the layer.
_LAYER_MODULES = {
    "attention.self.query": ("attention", "query"),
    "attention.self.key": ("attention", "key"),
    "attention.self.value": ("attention", "value"),
    "attention.output.dense": ("attention", "output", "dense"),
    "attention.output.LayerNorm": ("attention", "output", "LayerNorm"),
    "intermediate.dense": ("intermediate", "dense"),
    "output.dense": ("output", "dense"),
    "output.LayerNorm": ("output", "LayerNorm"),
}
_EMBEDDINGS = ("word_embeddings", "position_embeddings", "token_type_embeddings")
_LAYER_RE = re.compile(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias|gamma|beta)")
_IGNORED = re.compile(
    r"embeddings\.(position_ids|token_type_ids)|(lm_head|cls)\..*|pooler\..*|classifier\..*"
)


def _leaf(module: tuple[str, ...], kind: str):
    """(leaf name, transform) of an HF weight/bias; old checkpoints say gamma/beta for LN."""
    if module[-1] == "LayerNorm":
        return ("scale" if kind in ("weight", "gamma") else "bias"), None
    if kind == "weight":
        return "kernel", _T
    if kind == "bias":
        return "bias", None
    raise KeyError(kind)


def _head_names(config: BertConfig) -> dict[str, tuple[str, ...]]:
    """HF module -> morejax head module; RoBERTa's head has its own dense, BERT uses the pooler."""
    if config.model_type == "roberta":
        return {"classifier.dense": ("head", "dense"), "classifier.out_proj": ("head", "out_proj")}
    return {"pooler.dense": ("head", "dense"), "classifier": ("head", "out_proj")}


def hf_rename(config: BertConfig, *, include_head: bool = False):
    """HF tensor name -> (path, layer, transform) for weights.load_params.

    Accepts names with or without a ``bert.``/``roberta.`` prefix. Pooler and
    classifier tensors are ignored unless ``include_head`` (the target model then
    needs ``head/dense`` and ``head/out_proj``). MLM heads are always ignored.
    Unknown names raise KeyError, which load_params reports.
    """
    heads = _head_names(config)

    def rename(name: str):
        for prefix in ("bert.", "roberta."):
            if name.startswith(prefix):
                name = name[len(prefix) :]
                break
        module, _, kind = name.rpartition(".")
        if include_head and module in heads and kind in ("weight", "bias"):
            leaf, transform = _leaf(heads[module], kind)
            return heads[module] + (leaf,), None, transform
        if _IGNORED.fullmatch(name):
            return None
        sub = module.removeprefix("embeddings.")
        if sub != module and sub in _EMBEDDINGS and kind == "weight":
            return ("embeddings", sub, "embedding"), None, None
        if module == "embeddings.LayerNorm":
            return ("embeddings", "LayerNorm", _leaf(("LayerNorm",), kind)[0]), None, None
        m = _LAYER_RE.fullmatch(name)
        if m is None or m.group(2) not in _LAYER_MODULES:
            raise KeyError(name)
        i, sub, kind = int(m.group(1)), _LAYER_MODULES[m.group(2)], m.group(3)
        leaf, transform = _leaf(sub, kind)
        if config.scan_layers:
            return ("encoder", "layers") + sub + (leaf,), i, transform
        return ("encoder", f"layers_{i}") + sub + (leaf,), None, transform

    return rename


def hf_inverse_rename(config: BertConfig, *, prefix: str = ""):
    """morejax path -> [(HF name, layer, transform)] for weights.save_safetensors.

    Writes the names ``BertModel``/``RobertaModel`` use (``prefix`` e.g. ``'bert.'``
    for the ``...ForSequenceClassification`` layout); the head goes to
    ``pooler.dense``/``classifier`` (BERT) or ``classifier.{dense,out_proj}`` (RoBERTa),
    which are never prefixed for RoBERTa and prefixed like the rest for BERT's pooler.
    """
    layer_modules = {v: k for k, v in _LAYER_MODULES.items()}
    heads = {v: k for k, v in _head_names(config).items()}

    kinds = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}

    def inverse(path: tuple[str, ...]):
        path = tuple(path)
        try:
            kind = kinds[path[-1]]
            transform = _T if path[-1] == "kernel" else None
            if path[0] == "embeddings" and len(path) == 3:
                return [(f"{prefix}embeddings.{path[1]}.{kind}", None, None)]
            if path[0] == "head":
                module = heads[path[:2]]
                pre = prefix if module.startswith("pooler") else ""
                return [(f"{pre}{module}.{kind}", None, transform)]
            if path[0] == "encoder":
                sub = layer_modules[path[2:-1]]
                if path[1] == "layers":
                    return [
                        (f"{prefix}encoder.layer.{i}.{sub}.{kind}", i, transform)
                        for i in range(config.num_layers)
                    ]
                i = int(path[1].removeprefix("layers_"))
                return [(f"{prefix}encoder.layer.{i}.{sub}.{kind}", None, transform)]
        except (KeyError, ValueError):
            pass
        raise KeyError(f"no Hugging Face name for {'/'.join(path)}")

    return inverse
