"""Folders saved by the installed transformers load exactly: logits equal transformers' own.

Each model is a tiny random one built here from a config (nothing is downloaded), saved with
`save_pretrained` in transformers' current layout, and, where the layout changed between
versions, rewritten in the old one too.
"""

from __future__ import annotations

import json

import numpy as np
import pytest


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


def _compare(transformers_model, folder, lengths, vocab, **load):
    import jax.numpy as jnp
    import torch

    from morejax.models.registry import load_pretrained

    pre = load_pretrained(str(folder), **load)
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
    return pre


def _greedy_matches(transformers_model, pre, vocab, prompt_lengths, new_tokens):
    """Greedy decoding with morejax's KV cache, token for token against `generate`, with
    left-padded prompts of different lengths. Both stop a row at EOS and pad it with 0 (a tiny
    vocabulary picks EOS often; min_new_tokens would mask its logit on one side only)."""
    import torch

    from morejax.models import generate

    rng = np.random.default_rng(1)
    prompts = [list(rng.integers(3, vocab, n)) for n in prompt_lengths]
    ids, mask = generate.left_pad(prompts, pad_id=0)
    eos = pre.config.eos_token_id
    stops = eos if isinstance(eos, tuple) else () if eos is None else (eos,)
    apply_fn, init_cache = generate.llama_callables(pre.model)
    out = generate.generate(
        apply_fn,
        pre.params,
        ids,
        mask,
        init_cache=init_cache,
        max_new_tokens=new_tokens,
        stop_ids=stops,
        pad_id=0,
    )
    with torch.no_grad():
        want = transformers_model.generate(
            input_ids=torch.tensor(np.asarray(ids), dtype=torch.long),
            attention_mask=torch.tensor(np.asarray(mask), dtype=torch.long),
            max_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=0,
        )[:, ids.shape[1] :].numpy()
    want = np.pad(want, ((0, 0), (0, new_tokens - want.shape[1])))  # every row stopped early
    np.testing.assert_array_equal(np.asarray(out.tokens_BxT), want)


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
        ({"model_type": "mixtral"}, "mixtral.*mixture-of-experts"),
        ({"model_type": "gemma2", "hidden_activation": "gelu"}, "hidden_activation"),
        ({"model_type": "gemma2", "use_bidirectional_attention": True}, "bidirectional"),
        ({"model_type": "gemma3", "text_config": {}}, "vision tower"),
        ({"model_type": "phi3", "rope_scaling": {"type": "su", "short_factor": [1.0]}}, "'su'"),
        (
            {"model_type": "phi3", "rope_parameters": {"rope_type": "longrope", "factor": 4.0}},
            "longrope",
        ),
        ({"model_type": "phi3", "layer_types": ["full_attention"]}, "layer_types"),
        (
            {
                "model_type": "gemma3_text",
                "rope_parameters": {
                    "full_attention": {"rope_type": "default", "rope_theta": 1e6},
                    "sliding_attention": {"rope_type": "linear", "factor": 2.0},
                },
            },
            "sliding_attention",
        ),
        (
            {
                "model_type": "qwen2",
                "use_sliding_window": True,
                "sliding_window": 4,
                "layer_types": ["chunked_attention"],
            },
            "chunked_attention",
        ),
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


def _family(hf, name, **kw):
    small = dict(
        vocab_size=89,
        hidden_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=80,
        max_position_embeddings=128,
        rope_theta=10000.0,
    )
    return {
        "mistral": (hf.MistralConfig, hf.MistralForCausalLM),
        "qwen2": (hf.Qwen2Config, hf.Qwen2ForCausalLM),
        "qwen3": (hf.Qwen3Config, hf.Qwen3ForCausalLM),
        "llama": (hf.LlamaConfig, hf.LlamaForCausalLM),
        "gemma2": (hf.Gemma2Config, hf.Gemma2ForCausalLM),
        "gemma3_text": (hf.Gemma3TextConfig, hf.Gemma3ForCausalLM),
        "phi3": (hf.Phi3Config, hf.Phi3ForCausalLM),
    }[name], {**small, **kw}


def _perturb_norms(model):
    """Norm weights away from their init (ones, or Gemma's zeros), so that w and 1 + w differ."""
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.3 * torch.randn_like(p))
    return model


# Each case varies what its family changes: the window (shorter than the rows), GQA, biases,
# per-head norms with an explicit head_dim, tied embeddings, mixed sliding/full layers.
FAMILY_CASES = {
    "mistral-window-8": ("mistral", dict(sliding_window=8, num_key_value_heads=1)),
    "qwen2-biases-tied": ("qwen2", dict(tie_word_embeddings=True, rope_theta=1e6)),
    "qwen2-mixed-sliding": (
        "qwen2",
        dict(use_sliding_window=True, sliding_window=6, max_window_layers=1),
    ),
    "qwen3-qk-norm-head-dim-24": ("qwen3", dict(head_dim=24, num_key_value_heads=4)),
    "llama-attention-bias": ("llama", dict(attention_bias=True, num_key_value_heads=4)),
    # Larger weights so that both soft-caps bite; query_pre_attn_scalar != head_dim.
    "gemma2-softcaps-window-6": (
        "gemma2",
        dict(
            head_dim=16,
            sliding_window=6,
            query_pre_attn_scalar=24,
            attn_logit_softcapping=5.0,
            final_logit_softcapping=10.0,
            initializer_range=0.2,
        ),
    ),
    # Local and global RoPE bases, linear scaling on the global layers, per-head (1 + w) norms.
    "gemma3-local-global-rope": (
        "gemma3_text",
        dict(
            head_dim=16,
            sliding_window=6,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
            rope_theta=1000.0,
            rope_local_base_freq=30.0,
            rope_scaling={"rope_type": "linear", "factor": 4.0},
            query_pre_attn_scalar=20,
            final_logit_softcapping=10.0,
            initializer_range=0.2,
        ),
    ),
    # Fused qkv_proj / gate_up_proj, RoPE on half of each head, a window on every layer (Phi-3's
    # default pad id 32000 lies outside this vocabulary).
    "phi3-fused-partial-rotary-window-8": (
        "phi3",
        dict(partial_rotary_factor=0.5, sliding_window=8, pad_token_id=0, eos_token_id=2),
    ),
}
# Cases also run with scanned layers: mixed layer types (and RoPE bases) inside one scan.
SCANNED = ("qwen2-mixed-sliding", "gemma3-local-global-rope")


@pytest.mark.parametrize("case", sorted(FAMILY_CASES))
def test_family_folder_matches_transformers_logits_and_greedy_generation(hf, tmp_path, case):
    name, kw = FAMILY_CASES[case]
    (config_cls, model_cls), kw = _family(hf, name, **kw)
    model = _perturb_norms(model_cls(config_cls(**kw)).eval())
    written = _save(model, tmp_path)
    assert written["model_type"] == name
    # Rows of 30, 17 and 6 tokens: longer and shorter than any window here.
    scan = case in SCANNED
    pre = _compare(model, tmp_path, [30, 17, 6], kw["vocab_size"], scan_layers=scan)
    assert pre.config.model_type == name
    # Prompts of 5 and 9 tokens and 14 new ones: decoding runs past the windows.
    _greedy_matches(model, pre, kw["vocab_size"], [5, 9], 14)


# attention='xla' against einsum: a window, and what each family adds to the attention.
FLASH_CASES = {
    "llama": dict(qkv_bias=True, o_bias=True),
    "mistral": dict(model_type="mistral", sliding_window=5),
    "qwen2": dict(
        model_type="qwen2",
        qkv_bias=True,
        sliding_window=5,
        layer_types=("full_attention", "sliding_attention"),
    ),
    "qwen3": dict(model_type="qwen3", qk_norm=True),
    "gemma3_text": dict(
        model_type="gemma3_text",
        sliding_window=5,
        layer_types=("sliding_attention", "full_attention"),
        qk_norm=True,
        rope_local_theta=100.0,
        query_pre_attn_scalar=12,
        final_softcap=10.0,
    ),
    "phi3": dict(model_type="phi3", sliding_window=5, partial_rotary_factor=0.5),
}


def _tiny(**kw):
    from morejax.models import llama

    small = dict(
        vocab_size=50, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8
    )
    return llama.LlamaConfig(**{**small, "intermediate_size": 48, **kw})


@pytest.mark.parametrize("family", sorted(FLASH_CASES))
def test_sliding_window_flash_path_matches_einsum(family):
    """attention='xla' (jax.nn.dot_product_attention with a local window) on right-padded
    rows equals the einsum path with its explicit sliding mask."""
    import jax
    import jax.numpy as jnp

    from morejax.models import llama

    cfg = _tiny(**FLASH_CASES[family])
    model = llama.LlamaForCausalLM(cfg)
    ids, mask = _batch(50, [19, 11])
    ids, mask = jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32)
    params = model.init(jax.random.key(0), ids)["params"]
    want, _ = model.apply({"params": params}, ids, mask)
    flash = llama.LlamaForCausalLM(cfg.replace(attention="xla"))
    got, _ = flash.apply({"params": params}, ids, mask)
    valid = np.asarray(mask).astype(bool)
    np.testing.assert_allclose(np.asarray(got)[valid], np.asarray(want)[valid], atol=2e-5)


def test_flash_path_refuses_what_it_cannot_follow():
    """Mixed layer types inside one scan, and Gemma 2's attention soft-cap (which
    jax.nn.dot_product_attention lacks): errors, not a silent fallback to einsum."""
    import jax
    import jax.numpy as jnp

    from morejax.models import llama

    with pytest.raises(ValueError, match="mixed sliding/full layers"):
        mixed = _tiny(
            model_type="mistral",
            sliding_window=5,
            attention="xla",
            scan_layers=True,
            layer_types=("full_attention", "sliding_attention"),
        )
        llama.LlamaForCausalLM(mixed).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
    with pytest.raises(ValueError, match="no logit soft-capping"):
        llama.CONFIGS["gemma2-2b"].replace(attention="xla")


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


def test_a_gemma3_vision_folder_is_an_error_naming_the_vision_tower(tmp_path):
    from morejax.models.registry import load_pretrained

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gemma3", "text_config": {}}))
    with pytest.raises(NotImplementedError, match="vision tower"):
        load_pretrained(str(tmp_path))


def test_gemma3_4x_layout_reads_as_transformers_5_converts_it(hf):
    """A Gemma 3 config.json as the hub holds it (rope_theta, rope_local_base_freq, linear
    rope_scaling, sliding_window_pattern, no layer_types) and the 5.x dict transformers makes
    of it give one config."""
    from morejax.models.llama import LlamaConfig

    old = {
        "model_type": "gemma3_text",
        "vocab_size": 64,
        "hidden_size": 32,
        "num_hidden_layers": 8,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 8,
        "intermediate_size": 48,
        "rope_theta": 1_000_000.0,
        "rope_local_base_freq": 10_000.0,
        "rope_scaling": {"rope_type": "linear", "factor": 8.0},
        "sliding_window": 16,
        "sliding_window_pattern": 6,
        "bos_token_id": 2,
        "eos_token_id": 1,
        "pad_token_id": 0,
    }
    new = hf.Gemma3TextConfig(**old).to_dict()
    assert set(new["rope_parameters"]) == {"full_attention", "sliding_attention"}
    cfg = LlamaConfig.from_hf_config(old)
    assert LlamaConfig.from_hf_config(new) == cfg
    assert cfg.rope_scaling.rope_type == "linear" and cfg.rope_local_theta == 10_000.0
    assert cfg.layer_types[4:6] == ("sliding_attention", "full_attention")
    assert LlamaConfig.from_hf_config(cfg.to_hf_config()) == cfg


@pytest.mark.parametrize(
    "case",
    [
        "llama-attention-bias",
        "mistral-window-8",
        "qwen2-biases-tied",
        "qwen3-qk-norm-head-dim-24",
        "gemma2-softcaps-window-6",
        "gemma3-local-global-rope",
        "phi3-fused-partial-rotary-window-8",
    ],
)
def test_family_exports_load_in_peft_and_transformers(hf, tmp_path, case):
    """A LoRA on a family with biases / per-head norms: `--format peft` loads in
    `PeftModel.from_pretrained` and `--format merged` in the family's own class, both with
    morejax's logits."""
    import copy

    import jax
    import jax.numpy as jnp
    import torch
    from peft import PeftModel

    import morejax
    from morejax import interop
    from morejax.models.registry import load_pretrained

    name, kw = FAMILY_CASES[case]
    (config_cls, model_cls), kw = _family(hf, name, **kw)
    model = model_cls(config_cls(**kw)).eval()
    _save(model, tmp_path / "hf")
    pre = load_pretrained(str(tmp_path / "hf"))
    lora = morejax.LoRA(rank=4, alpha=8)  # Phi-3's fused kernels: one matrix each, as PEFT
    base, adapters = morejax.adapt(
        pre.params,
        {r".*/(q_proj|v_proj|qkv_proj|gate_up_proj|down_proj)/kernel": lora},
        jax.random.key(0),
    )
    # B starts at zero: move it so that the adapters change the logits.
    adapters = jax.tree.map(
        lambda x: x + 0.05 * jnp.sin(jnp.arange(x.size)).reshape(x.shape), adapters
    )
    ids, mask = _batch(kw["vocab_size"], [12, 7])
    want = np.asarray(morejax.call(pre.model.apply, base, adapters, ids, mask)[0])
    t_ids, t_mask = torch.tensor(ids), torch.tensor(mask)
    valid = mask.astype(bool)

    out = interop.export_peft(base, adapters, pre.config, tmp_path / "peft")
    served = PeftModel.from_pretrained(copy.deepcopy(model), str(out)).eval()
    merged = interop.export_merged(base, adapters, pre.config, tmp_path / "merged")
    reloaded = model_cls.from_pretrained(merged).eval()
    for torch_model in (served, reloaded):
        with torch.no_grad():
            got = torch_model(input_ids=t_ids, attention_mask=t_mask).logits.numpy()
        np.testing.assert_allclose(got[valid], want[valid], atol=2e-4, rtol=1e-4)
    assert not np.allclose(want, np.asarray(pre.model.apply({"params": pre.params}, ids, mask)[0]))


# Published parameter counts (the model cards' totals, embeddings included).
PUBLISHED = {
    "llama3.2-1b": 1_235_814_400,
    "llama3.1-8b": 8_030_261_248,
    "mistral-7b": 7_241_732_096,
    "qwen2.5-0.5b": 494_032_768,
    "qwen2.5-7b": 7_615_616_512,
    "qwen3-8b": 8_190_735_360,
    "gemma2-2b": 2_614_341_888,
    "gemma2-9b": 9_241_705_984,
    "gemma3-1b": 999_885_952,
    "phi3-mini": 3_821_079_552,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_named_configs_count_what_transformers_counts(hf, name):
    """From shapes alone: equal to the model card and to transformers' own model built on the
    meta device from the config.json morejax writes for it."""
    import jax
    import torch

    from morejax.models import llama

    cfg = llama.CONFIGS[name]
    ours = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(llama.abstract_params(cfg)))
    with torch.device("meta"):
        theirs = hf.AutoModelForCausalLM.from_config(hf.AutoConfig.for_model(**cfg.to_hf_config()))
    assert ours == sum(p.numel() for p in theirs.parameters()) == PUBLISHED[name]
    assert llama.LlamaConfig.from_hf_config(cfg.to_hf_config()) == cfg
