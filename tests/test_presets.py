"""Named targets (`attention`, `mlp`, `all-linear`, the papers' sets) pick the same projections
in every family, whatever each calls them."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import morejax
from morejax.models import bert, llama

DECODER = llama.LlamaConfig(
    vocab_size=32, hidden_size=16, num_layers=2, num_heads=2, num_kv_heads=1,
    intermediate_size=24, model_type="qwen2", qkv_bias=True,
)  # fmt: skip
ENCODER = bert.BertConfig(
    vocab_size=32, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=24,
    max_position_embeddings=16, num_labels=2,
)  # fmt: skip


def targets(params, preset):
    plan = morejax.plan(params, {preset: morejax.LoRA(rank=1)})
    return sorted(p.rsplit("/", 1)[0] for p in plan if "layers_0/" in p)


def decoder_params():
    return llama.abstract_params(DECODER)


def encoder_params():
    ids = np.zeros((1, 4), np.int32)
    model = bert.MODELS["classification"](ENCODER)
    return jax.eval_shape(model.init, jax.random.key(0), ids, ids, ids)["params"]


@pytest.mark.parametrize(
    "preset, decoder, encoder",
    [
        (
            "attention",
            ["self_attn/k_proj", "self_attn/o_proj", "self_attn/q_proj", "self_attn/v_proj"],
            ["attention/key", "attention/output/dense", "attention/query", "attention/value"],
        ),
        ("mlp", ["mlp/down_proj", "mlp/gate_proj", "mlp/up_proj"],
         ["intermediate/dense", "output/dense"]),
        ("more-paper", ["self_attn/k_proj", "self_attn/q_proj", "self_attn/v_proj"],
         ["attention/key", "attention/query", "attention/value"]),
        (
            "milora-paper",
            ["mlp/down_proj", "mlp/up_proj", "self_attn/k_proj", "self_attn/q_proj",
             "self_attn/v_proj"],
            ["attention/key", "attention/query", "attention/value"],
        ),
    ],
)  # fmt: skip
def test_presets_pick_the_same_projections_in_each_family(preset, decoder, encoder):
    assert targets(decoder_params(), preset) == [f"layers_0/{t}" for t in decoder]
    assert targets(encoder_params(), preset) == [f"encoder/layers_0/{t}" for t in encoder]


def test_all_linear_is_attention_plus_mlp_and_a_bad_name_lists_the_presets():
    params = decoder_params()
    both = sorted(targets(params, "attention") + targets(params, "mlp"))
    assert targets(params, "all-linear") == both
    with pytest.raises(ValueError, match="named targets: all-linear, attention, mlp"):
        morejax.plan(params, {"atention": morejax.LoRA(rank=1)})
