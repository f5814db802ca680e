"""Folders saved by the installed transformers load exactly: logits equal transformers' own.

Each model is a tiny random one built here from a config (nothing is downloaded), saved with
`save_pretrained` in transformers' current layout, and, where the layout changed between
versions, rewritten in the old one too.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import missing


@pytest.fixture(scope="module")
def hf():
    try:
        import torch
        import transformers
    except ImportError as e:
        missing(f"these tests need the `interop` extra (torch, transformers): {e}")
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    return transformers


def _save(model, path):
    model.save_pretrained(path)
    return json.loads((path / "config.json").read_text())


def _as_4x_layout(path):
    """transformers 4.x wrote rope settings as top-level `rope_theta` / `rope_scaling`."""
    cfg = json.loads((path / "config.json").read_text())
    rope = dict(cfg.pop("rope_parameters"))
    cfg["rope_theta"] = rope.pop("rope_theta")
    if rope.get("rope_type", "default") != "default":
        cfg["rope_scaling"] = rope
    (path / "config.json").write_text(json.dumps(cfg))


def _batch(vocab, lengths, seed=0):
    """Right-padded ids and mask (B, max(lengths))."""
    rng = np.random.default_rng(seed)
    L = max(lengths)
    ids = rng.integers(1, vocab, (len(lengths), L))
    mask = (np.arange(L)[None, :] < np.asarray(lengths)[:, None]).astype(np.int64)
    return ids * mask, mask


def _compare(transformers_model, folder, lengths, vocab):
    import jax.numpy as jnp
    import torch

    from morejax.models.registry import load_pretrained

    pre = load_pretrained(str(folder))
    ids, mask = _batch(vocab, lengths)
    with torch.no_grad():
        want = transformers_model(
            input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)
        ).logits.numpy()
    got, _ = pre.model.apply(
        {"params": pre.params}, jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32)
    )
    got = np.asarray(got)
    valid = mask.astype(bool)
    err = np.abs(got[valid] - want[valid]).max() / np.abs(want[valid]).max()
    assert err <= 1e-4, f"max relative error {err:.2e}"


@pytest.mark.parametrize("layout", ["5.x", "4.x"])
def test_llama3_rope_scaling_folder_matches_transformers(hf, tmp_path, layout):
    """theta 500,000 and llama3 scaling with a short original context, so that positions
    past it exercise the scaled frequencies; GQA; right-padded rows of several lengths."""
    cfg = hf.LlamaConfig(
        vocab_size=97,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=96,
        max_position_embeddings=128,
        rope_theta=500000.0,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16,
        },
    )
    model = hf.LlamaForCausalLM(cfg).eval()
    written = _save(model, tmp_path)
    assert "rope_parameters" in written  # the layout that loaded 30-48% off before
    if layout == "4.x":
        _as_4x_layout(tmp_path)
    _compare(model, tmp_path, [40, 23, 7], cfg.vocab_size)


def test_llama_tied_default_rope_folder_matches_transformers(hf, tmp_path):
    cfg = hf.LlamaConfig(
        vocab_size=80,
        hidden_size=48,
        num_hidden_layers=3,
        num_attention_heads=6,
        num_key_value_heads=3,
        intermediate_size=64,
        rope_theta=1000.0,
        tie_word_embeddings=True,
        max_position_embeddings=64,
    )
    model = hf.LlamaForCausalLM(cfg).eval()
    _save(model, tmp_path)
    _compare(model, tmp_path, [33, 12], cfg.vocab_size)


@pytest.mark.parametrize(
    "change, field",
    [
        ({"rope_parameters": {"rope_theta": 1e4, "rope_type": "yarn", "factor": 4.0}}, "yarn"),
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"attention_bias": True}, "attention_bias"),
        ({"sliding_window": 4096}, "sliding_window"),
        ({"partial_rotary_factor": 0.5}, "partial_rotary_factor"),
        (
            {"rope_parameters": {"rope_theta": 1e4, "rope_type": "default", "factor": 2.0}},
            "factor",
        ),
    ],
)
def test_a_field_that_changes_the_numbers_is_honoured_or_refused(change, field):
    from morejax.models.llama import LlamaConfig

    base = {
        "model_type": "llama",
        "vocab_size": 10,
        "hidden_size": 8,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 16,
    }
    assert LlamaConfig.from_hf_config(base).rope_theta == 10000.0
    with pytest.raises(NotImplementedError, match=field):
        LlamaConfig.from_hf_config({**base, **change})


def test_both_layouts_give_the_same_config():
    from morejax.models.llama import LlamaConfig

    base = {
        "vocab_size": 10,
        "hidden_size": 8,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 16,
    }
    rope = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0}
    new = LlamaConfig.from_hf_config(
        {**base, "rope_parameters": {"rope_theta": 5e5, "rope_type": "llama3", **rope}}
    )
    old = LlamaConfig.from_hf_config(
        {**base, "rope_theta": 5e5, "rope_scaling": {"rope_type": "llama3", **rope}}
    )
    assert new == old and new.rope_theta == 5e5 and new.rope_scaling.factor == 8.0
