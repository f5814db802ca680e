"""LLaMA decoder: numerics against an independent numpy reference, KV cache, layouts, HF I/O."""

from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from morejax.models import llama, weights
from morejax.models.llama import CONFIGS, LlamaConfig, LlamaForCausalLM

TINY = LlamaConfig(
    vocab_size=61,
    hidden_size=32,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    intermediate_size=48,
    rope_theta=500.0,  # small theta: rotations matter at short lengths
    rms_norm_eps=1e-6,
    max_seq_len=64,
)


def random_hf_tensors(cfg: LlamaConfig, seed=0) -> dict[str, np.ndarray]:
    """A random checkpoint in Hugging Face layout (torch Linear weights are [out, in])."""
    rng = np.random.default_rng(seed)
    D, K, F = cfg.hidden_size, cfg.head_dim, cfg.intermediate_size
    w = lambda *shape: (0.3 * rng.standard_normal(shape)).astype(np.float32)
    norm = lambda: (1 + 0.2 * rng.standard_normal(D)).astype(np.float32)
    t = {"model.embed_tokens.weight": w(cfg.vocab_size, D), "model.norm.weight": norm()}
    if not cfg.tie_embeddings:
        t["lm_head.weight"] = w(cfg.vocab_size, D)
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}."
        t[p + "self_attn.q_proj.weight"] = w(cfg.num_heads * K, D)
        t[p + "self_attn.k_proj.weight"] = w(cfg.num_kv_heads * K, D)
        t[p + "self_attn.v_proj.weight"] = w(cfg.num_kv_heads * K, D)
        t[p + "self_attn.o_proj.weight"] = w(D, cfg.num_heads * K)
        t[p + "mlp.gate_proj.weight"] = w(F, D)
        t[p + "mlp.up_proj.weight"] = w(F, D)
        t[p + "mlp.down_proj.weight"] = w(D, F)
        t[p + "input_layernorm.weight"] = norm()
        t[p + "post_attention_layernorm.weight"] = norm()
    return t


def tiny_params(cfg: LlamaConfig, seed=0):
    """Random params without model.init (each new random shape costs a compile)."""
    hf = random_hf_tensors(cfg, seed)
    return weights.load_params(llama.abstract_params(cfg), hf.items(), llama.hf_rename(cfg))


def numpy_reference_logits(hf: dict, cfg: LlamaConfig, ids_L: np.ndarray) -> np.ndarray:
    """Hugging Face LlamaForCausalLM semantics, written independently in numpy (float64)."""
    H, G, K = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    g = {k: v.astype(np.float64) for k, v in hf.items()}
    L = len(ids_L)

    def rms(x, w):
        return w * x / np.sqrt((x**2).mean(-1, keepdims=True) + cfg.rms_norm_eps)

    inv = 1.0 / cfg.rope_theta ** (np.arange(0, K, 2) / K)
    ang = np.arange(L)[:, None] * inv[None]
    cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))

    def rope(x):  # (L, heads, K)
        rot = np.concatenate([-x[..., K // 2 :], x[..., : K // 2]], -1)
        return x * cos[:, None] + rot * sin[:, None]

    x = g["model.embed_tokens.weight"][ids_L]
    causal = np.tril(np.ones((L, L), bool))
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}."
        h = rms(x, g[p + "input_layernorm.weight"])
        q = rope((h @ g[p + "self_attn.q_proj.weight"].T).reshape(L, H, K))
        k = rope((h @ g[p + "self_attn.k_proj.weight"].T).reshape(L, G, K))
        v = (h @ g[p + "self_attn.v_proj.weight"].T).reshape(L, G, K)
        k, v = np.repeat(k, H // G, axis=1), np.repeat(v, H // G, axis=1)  # HF repeat_kv
        s = np.einsum("lhk,shk->hls", q, k) / np.sqrt(K)
        s = np.where(causal[None], s, -np.inf)
        a = np.exp(s - s.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        o = np.einsum("hls,shk->lhk", a, v).reshape(L, H * K)
        x = x + o @ g[p + "self_attn.o_proj.weight"].T
        h = rms(x, g[p + "post_attention_layernorm.weight"])
        gate = h @ g[p + "mlp.gate_proj.weight"].T
        up = h @ g[p + "mlp.up_proj.weight"].T
        x = x + (gate / (1 + np.exp(-gate)) * up) @ g[p + "mlp.down_proj.weight"].T
    x = rms(x, g["model.norm.weight"])
    head = g["model.embed_tokens.weight"] if cfg.tie_embeddings else g["lm_head.weight"]
    return x @ head.T


def save_hf_dir(path, cfg, tensors, *, shards: int = 1):
    """Writes a HF-style checkpoint dir by hand (independently of save_safetensors)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(cfg.to_hf_config()))
    names = sorted(tensors)
    if shards == 1:
        save_file({n: tensors[n] for n in names}, str(path / "model.safetensors"))
        return
    weight_map = {}
    for s in range(shards):
        fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = names[s::shards]
        save_file({n: tensors[n] for n in part}, str(path / fname))
        weight_map.update({n: fname for n in part})
    (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


@functools.cache
def jit_apply(cfg):
    return jax.jit(LlamaForCausalLM(cfg).apply)


def logits_of(cfg, params, ids_BxL, mask_BxL=None):
    return np.asarray(jit_apply(cfg)({"params": params}, jnp.asarray(ids_BxL), mask_BxL)[0])


IDS_L = np.array([3, 17, 42, 5, 60, 1, 9, 33, 12, 7], np.int32)


@pytest.mark.parametrize("tie,scan,shards", [(False, False, 1), (True, True, 3)])
def test_hf_checkpoint_matches_numpy_reference(tmp_path, tie, scan, shards):
    cfg = TINY.replace(tie_embeddings=tie)
    hf = random_hf_tensors(cfg)
    if tie:  # tied checkpoints often still carry lm_head.weight; it must be ignored
        hf["lm_head.weight"] = np.zeros((cfg.vocab_size, cfg.hidden_size), np.float32)
    save_hf_dir(tmp_path / "ckpt", cfg, hf, shards=shards)
    loaded_cfg, params = llama.load_hf_checkpoint(tmp_path / "ckpt", scan_layers=scan)
    assert loaded_cfg.tie_embeddings == tie and ("lm_head" in params) == (not tie)
    if scan:
        assert params["layers"]["self_attn"]["k_proj"]["kernel"].shape == (2, 32, 16)
    got = logits_of(loaded_cfg, params, IDS_L[None])[0]
    want = numpy_reference_logits(hf, cfg, IDS_L)
    assert np.abs(want).max() > 1.0  # a real signal, not a collapsed model
    np.testing.assert_allclose(got, want, atol=2e-4 * np.abs(want).max(), rtol=0)


def test_save_round_trip_single_and_sharded_both_layouts(tmp_path):
    hf = random_hf_tensors(TINY, seed=1)
    save_hf_dir(tmp_path / "src", TINY, hf)
    cfg, params = llama.load_hf_checkpoint(tmp_path / "src")
    ref = logits_of(cfg, params, IDS_L[None])

    files = llama.save_hf_checkpoint(params, cfg, tmp_path / "one")
    assert [f.name for f in files] == ["model.safetensors"]
    sharded = llama.save_hf_checkpoint(params, cfg, tmp_path / "many", max_shard_bytes=20_000)
    assert len(sharded) > 2 and (tmp_path / "many" / "model.safetensors.index.json").is_file()
    # Names and values match the original HF tensors exactly.
    back = dict(weights.safetensors_tensors(tmp_path / "many"))
    assert sorted(back) == sorted(hf)
    for name, value in hf.items():
        np.testing.assert_array_equal(back[name], value, err_msg=name)

    for where in ("one", "many"):
        scfg, sparams = llama.load_hf_checkpoint(tmp_path / where, scan_layers=True)
        assert scfg.scan_layers
        np.testing.assert_allclose(logits_of(scfg, sparams, IDS_L[None]), ref, atol=1e-4)
        # Saving from the scanned layout gives the same HF tensors again.
        llama.save_hf_checkpoint(sparams, scfg, tmp_path / f"{where}-rescan")
        again = dict(weights.safetensors_tensors(tmp_path / f"{where}-rescan"))
        np.testing.assert_array_equal(
            again["model.layers.1.self_attn.q_proj.weight"],
            hf["model.layers.1.self_attn.q_proj.weight"],
        )


def test_wrong_architecture_names_first_mismatching_tensor(tmp_path):
    hf = random_hf_tensors(TINY)
    save_hf_dir(tmp_path / "ckpt", TINY, hf)
    wide = TINY.replace(intermediate_size=64)
    with pytest.raises(ValueError) as err:
        llama.load_hf_checkpoint(tmp_path / "ckpt", wide)
    msg = str(err.value)
    first_mlp = next(
        n for n, _ in weights.safetensors_tensors(tmp_path / "ckpt") if "mlp" in n
    )  # the first tensor the FFN width touches, in file order
    assert repr(first_mlp) in msg and "expects" in msg, msg

    with pytest.raises(ValueError, match=r"model\.layers\.2\..*layers_2"):
        fewer = tmp_path / "deep"
        save_hf_dir(
            fewer, TINY.replace(num_layers=3), random_hf_tensors(TINY.replace(num_layers=3))
        )
        llama.load_hf_checkpoint(fewer, TINY)
    with pytest.raises(ValueError, match=r"layer 2 but .*layers/"):
        llama.load_hf_checkpoint(fewer, TINY.replace(scan_layers=True))


@pytest.mark.parametrize("scan", [False, True])
def test_kv_cache_chunks_match_full_forward_with_left_padding(scan):
    cfg = TINY.replace(scan_layers=scan, remat="full" if scan else "none")
    model = LlamaForCausalLM(cfg)
    params = tiny_params(cfg)
    # Row 1 is row 0's last 6 tokens, left-padded by 4.
    ids = np.stack([IDS_L, np.r_[np.zeros(4, np.int32), IDS_L[4:]]])
    mask = np.stack([np.ones(10, np.int32), np.r_[np.zeros(4, np.int32), np.ones(6, np.int32)]])
    full = logits_of(cfg, params, ids, mask)
    # Unpadded row 1 (right-filled to the same shape, so no new compile; causal => no effect).
    alone = logits_of(cfg, params, np.stack([np.r_[IDS_L[4:], IDS_L[:4]]] * 2), np.ones_like(mask))
    np.testing.assert_allclose(full[1, 4:], alone[0, :6], atol=1e-4)
    assert np.abs(full[0, 4:] - full[1, 4:]).max() > 1e-2  # context really matters

    apply = jit_apply(cfg)
    cache = model.init_cache(2, 16)
    chunks = []
    for lo in range(0, 10, 2):  # equal chunks: one compile
        lg, cache = apply(
            {"params": params}, ids[:, lo : lo + 2], mask[:, lo : lo + 2], None, cache
        )
        chunks.append(np.asarray(lg))
    assert int(cache["end"]) == 10 and np.asarray(cache["mask"]).sum() == 16
    cached = np.concatenate(chunks, 1)
    valid = mask.astype(bool)  # logits at pad positions are meaningless
    np.testing.assert_allclose(cached[valid], full[valid], atol=1e-4)


def test_dot_product_attention_matches_einsum_on_right_padded_rows():
    """attention='xla' runs the jax.nn.dot_product_attention path ('cudnn' is the same call
    on a GPU): same logits at the valid positions and the same gradients."""
    cfg = TINY.replace(scan_layers=True)
    params = tiny_params(cfg)
    ids = np.stack([IDS_L, np.r_[IDS_L[:7], np.zeros(3, np.int32)]])
    mask = np.stack([np.ones(10, np.int32), np.r_[np.ones(7, np.int32), np.zeros(3, np.int32)]])

    def loss_and_logits(cfg, params):
        def loss(params):
            logits = LlamaForCausalLM(cfg).apply({"params": params}, ids, mask)[0]
            return (logits * mask[..., None]).sum() / 100.0, logits

        (value, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
        return value, np.asarray(logits), grads

    v_ref, ref, g_ref = loss_and_logits(cfg, params)
    v_new, new, g_new = loss_and_logits(cfg.replace(attention="xla"), params)
    np.testing.assert_allclose(new[0], ref[0], atol=1e-4)
    np.testing.assert_allclose(new[1, :7], ref[1, :7], atol=1e-4)
    np.testing.assert_allclose(v_new, v_ref, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4), g_new, g_ref)
    with pytest.raises(ValueError, match="attention='flash'"):
        TINY.replace(attention="flash")


def test_named_configs_have_hf_parameter_counts():
    counts = {}
    for name in ("smollm2-135m", "llama-7b", "llama-2-7b", "llama-3-8b"):  # others: families
        shapes = llama.abstract_params(CONFIGS[name].replace(scan_layers=True))
        counts[name] = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
    assert counts == {
        "smollm2-135m": 134_515_008,
        "llama-7b": 6_738_415_616,
        "llama-2-7b": 6_738_415_616,
        "llama-3-8b": 8_030_261_248,
    }
    shapes = llama.abstract_params(CONFIGS["llama-3-8b"])
    assert shapes["layers_31"]["self_attn"]["k_proj"]["kernel"].shape == (4096, 1024)
    assert "lm_head" not in llama.abstract_params(CONFIGS["smollm2-135m"].replace(scan_layers=True))


def test_hf_config_round_trip_and_llama3_rope_scaling():
    hf = {
        "vocab_size": 128256,
        "hidden_size": 4096,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "intermediate_size": 14336,
        "rope_theta": 500000.0,
        "rms_norm_eps": 1e-5,
        "max_position_embeddings": 131072,
        "tie_word_embeddings": False,
        "eos_token_id": [128001, 128008, 128009],
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    }
    cfg = LlamaConfig.from_hf_config(hf, scan_layers=True)
    assert cfg.head_dim == 128 and cfg.eos_token_id == (128001, 128008, 128009)
    assert LlamaConfig.from_hf_config(cfg.to_hf_config(), scan_layers=True) == cfg
    plain = llama.rope_inv_freq(cfg.replace(rope_scaling=None))
    scaled = llama.rope_inv_freq(cfg)
    wavelen = 2 * np.pi / plain
    high, low = wavelen < 8192 / 4, wavelen > 8192 / 1
    assert high.any() and low.any() and (~high & ~low).any()
    np.testing.assert_allclose(scaled[high], plain[high], rtol=1e-6)
    np.testing.assert_allclose(scaled[low], plain[low] / 8, rtol=1e-6)
    mid = ~high & ~low
    assert np.all(scaled[mid] < plain[mid]) and np.all(scaled[mid] > plain[mid] / 8)


def test_hf_rename_paths():
    rename = llama.hf_rename(TINY)
    srename = llama.hf_rename(TINY.replace(scan_layers=True))
    w = np.arange(6.0).reshape(2, 3)
    path, layer, f = rename("model.layers.1.mlp.down_proj.weight")
    assert path == ("layers_1", "mlp", "down_proj", "kernel") and layer is None
    np.testing.assert_array_equal(f(w), w.T)
    assert srename("model.layers.1.input_layernorm.weight") == (
        ("layers", "input_layernorm", "scale"),
        1,
        None,
    )
    assert rename("model.layers.0.self_attn.rotary_emb.inv_freq") is None
    with pytest.raises(KeyError):
        rename("model.layers.0.self_attn.q_proj.bias")
    inverse = llama.hf_inverse_rename(TINY.replace(scan_layers=True))
    pieces = list(inverse(("layers", "self_attn", "o_proj", "kernel")))
    assert [(n, i) for n, i, _ in pieces] == [
        ("model.layers.0.self_attn.o_proj.weight", 0),
        ("model.layers.1.self_attn.o_proj.weight", 1),
    ]


def test_registry_loads_a_local_llama_folder(tmp_path):
    from morejax.models.registry import load_pretrained

    params = tiny_params(TINY)
    llama.save_hf_checkpoint(params, TINY, tmp_path / "ckpt")
    pre = load_pretrained(str(tmp_path / "ckpt"), scan_layers=True)
    assert isinstance(pre.model, llama.LlamaForCausalLM) and pre.config.scan_layers
    want = params["layers_0"]["self_attn"]["q_proj"]["kernel"]
    got = pre.params["layers"]["self_attn"]["q_proj"]["kernel"][0]
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    with pytest.raises(ValueError, match="causal LM"):
        load_pretrained(str(tmp_path / "ckpt"), head="classification")
