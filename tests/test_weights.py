"""Safetensors I/O: HF-layout round trips (single, sharded, bf16) and loader errors."""

import json

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from safetensors import safe_open

from morejax import paths
from morejax.models import weights
from morejax.models.bert import (
    BertConfig,
    BertEncoder,
    BertForSequenceClassification,
    hf_inverse_rename,
    hf_rename,
)

TINY = BertConfig(
    vocab_size=40,
    hidden_size=16,
    num_layers=2,
    num_heads=2,
    intermediate_size=32,
    max_position_embeddings=20,
    num_labels=3,
)
IDS_2x7 = np.array([[2, 5, 9, 11, 3, 0, 0], [2, 7, 7, 8, 30, 31, 3]], np.int32)


def abstract(model):
    return jax.eval_shape(model.init, jax.random.key(0), jnp.asarray(IDS_2x7))["params"]


def init(model, seed=0):
    """Random params from numpy: Flax's init compiles every RNG op (slow on 2 busy cores)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda s: jnp.asarray(rng.normal(0, 0.5, s.shape).astype(s.dtype)), abstract(model)
    )


def assert_trees_equal(a, b):
    fa, fb = paths.flatten_dict(a), paths.flatten_dict(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]), err_msg=str(k))


@pytest.fixture(scope="module")
def tiny_cls():
    model = BertForSequenceClassification(TINY)
    return model, init(model)


def test_roundtrip_single_file_hf_layout(tmp_path, tiny_cls):
    model, params = tiny_cls
    file = tmp_path / "model.safetensors"
    weights.save_safetensors(params, file, hf_inverse_rename(TINY, prefix="bert."))
    with safe_open(str(file), "numpy") as f:
        names = set(f.keys())
        q = f.get_tensor("bert.encoder.layer.1.attention.self.query.weight")
        w1 = f.get_tensor("bert.encoder.layer.0.intermediate.dense.weight")
    assert "bert.embeddings.LayerNorm.weight" in names
    assert {"bert.pooler.dense.weight", "classifier.weight", "classifier.bias"} <= names
    assert len(names) == 5 + 16 * 2 + 4  # embeddings, 16 per layer, head
    # torch layout [out, in]
    assert w1.shape == (32, 16)
    np.testing.assert_array_equal(
        q, np.asarray(params["encoder"]["layers_1"]["attention"]["query"]["kernel"]).T
    )

    loaded = weights.load_params(
        abstract(model),
        weights.safetensors_tensors(file),
        hf_rename(TINY, include_head=True),
    )
    assert_trees_equal(loaded, params)
    assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(loaded))


def test_roundtrip_sharded_index_into_scanned_layout(tmp_path, tiny_cls):
    model, params = tiny_cls
    files = weights.save_safetensors(
        params, tmp_path, hf_inverse_rename(TINY), max_shard_bytes=4000
    )
    index = json.loads((tmp_path / weights.INDEX_NAME).read_text())
    assert len(files) > 2
    assert set(index["weight_map"].values()) == {f.name for f in files}
    assert not (tmp_path / weights.SINGLE_NAME).exists()
    n = sum(1 for _ in weights.safetensors_tensors(tmp_path))
    assert n == len(index["weight_map"]) == 41

    # Same checkpoint, read back into the stacked (nn.scan) layout.
    scfg = TINY.replace(scan_layers=True)
    smodel = BertForSequenceClassification(scfg)
    sparams = weights.load_params(
        abstract(smodel), weights.safetensors_tensors(tmp_path), hf_rename(scfg, include_head=True)
    )
    k = sparams["encoder"]["layers"]["output"]["dense"]["kernel"]
    assert k.shape == (2, 32, 16)
    np.testing.assert_array_equal(k[1], params["encoder"]["layers_1"]["output"]["dense"]["kernel"])
    np.testing.assert_array_equal(k[0], params["encoder"]["layers_0"]["output"]["dense"]["kernel"])

    # ... and saved again from the scanned layout: same tensors as the original.
    weights.save_safetensors(sparams, tmp_path / "again.safetensors", hf_inverse_rename(scfg))
    back = dict(weights.safetensors_tensors(tmp_path / "again.safetensors"))
    orig = dict(weights.safetensors_tensors(tmp_path))
    assert back.keys() == orig.keys()
    for name in orig:
        np.testing.assert_array_equal(back[name], orig[name], err_msg=name)


def test_bf16_tensors_read_and_cast(tmp_path, tiny_cls):
    model, params = tiny_cls
    bf = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    weights.save_safetensors(bf, tmp_path / "m.safetensors", hf_inverse_rename(TINY))
    with safe_open(str(tmp_path / "m.safetensors"), "numpy") as f:
        assert f.get_slice("embeddings.word_embeddings.weight").get_dtype() == "BF16"
    tensors = dict(weights.safetensors_tensors(tmp_path / "m.safetensors"))
    assert tensors["embeddings.word_embeddings.weight"].dtype == ml_dtypes.bfloat16
    loaded = weights.load_params(
        abstract(model),
        tensors.items(),
        hf_rename(TINY, include_head=True),
    )
    leaf = loaded["encoder"]["layers_0"]["attention"]["key"]["kernel"]
    assert leaf.dtype == jnp.float32  # the abstract leaf's dtype
    np.testing.assert_array_equal(leaf, bf["encoder"]["layers_0"]["attention"]["key"]["kernel"])
    as_bf = weights.load_params(
        abstract(model), tensors.items(), hf_rename(TINY, include_head=True), dtype=jnp.bfloat16
    )
    assert {x.dtype for x in jax.tree.leaves(as_bf)} == {jnp.dtype(jnp.bfloat16)}


def test_wrong_architecture_names_first_mismatch(tmp_path, tiny_cls):
    _, params = tiny_cls
    weights.save_safetensors(params, tmp_path, hf_inverse_rename(TINY, prefix="bert."))
    wider = TINY.replace(hidden_size=24)
    with pytest.raises(ValueError) as e:
        weights.load_params(
            abstract(BertEncoder(wider)), weights.safetensors_tensors(tmp_path), hf_rename(wider)
        )
    msg = str(e.value)  # safetensors lists names sorted, so LayerNorm comes first
    assert msg.startswith(
        "checkpoint tensor 'bert.embeddings.LayerNorm.bias' has shape (16,) but "
        "morejax expects (24,) at embeddings/LayerNorm/bias"
    )
    assert "another model" in msg

    # Transposed kernels report both the stored and the transformed shape.
    wide_ffn = TINY.replace(intermediate_size=48)
    kernels_only = (
        (n, t) for n, t in weights.safetensors_tensors(tmp_path) if n.endswith("dense.weight")
    )
    with pytest.raises(
        ValueError,
        match=r"'bert\.encoder\.layer\.0\.intermediate\.dense\.weight' has shape \(32, 16\) "
        r"\(\(16, 32\) after its transform\) but morejax expects \(16, 48\) at "
        r"encoder/layers_0/intermediate/dense/kernel",
    ):
        weights.load_params(abstract(BertEncoder(wide_ffn)), kernels_only, hf_rename(wide_ffn))


def test_layer_count_mismatch_both_ways(tmp_path, tiny_cls):
    _, params = tiny_cls
    weights.save_safetensors(params, tmp_path, hf_inverse_rename(TINY))
    # Checkpoint deeper than the model: no silent truncation.
    one = TINY.replace(num_layers=1)
    with pytest.raises(ValueError, match="maps to encoder/layers_1/.*does not have"):
        weights.load_params(
            abstract(BertEncoder(one)), weights.safetensors_tensors(tmp_path), hf_rename(one)
        )
    scan_one = one.replace(scan_layers=True)
    with pytest.raises(ValueError, match="is layer 1 but morejax's stacked leaf"):
        weights.load_params(
            abstract(BertEncoder(scan_one)),
            weights.safetensors_tensors(tmp_path),
            hf_rename(scan_one),
        )
    # Model deeper than the checkpoint: the unfilled leaves are listed.
    three = TINY.replace(num_layers=3)
    with pytest.raises(ValueError, match=r"16 parameter\(s\) not found.*encoder/layers_2/"):
        weights.load_params(
            abstract(BertEncoder(three)), weights.safetensors_tensors(tmp_path), hf_rename(three)
        )
    scan_three = three.replace(scan_layers=True)
    with pytest.raises(ValueError, match=r"encoder/layers/attention/query/kernel \(layers \[2\]\)"):
        weights.load_params(
            abstract(BertEncoder(scan_three)),
            weights.safetensors_tensors(tmp_path),
            hf_rename(scan_three),
        )


def test_unknown_and_duplicate_names(tmp_path, tiny_cls):
    _, params = tiny_cls
    weights.save_safetensors(params, tmp_path, hf_inverse_rename(TINY))
    tensors = list(weights.safetensors_tensors(tmp_path))
    extra = tensors + [("encoder.layer.0.adapter.weight", np.zeros(3, np.float32))]
    target = abstract(BertEncoder(TINY))
    with pytest.warns(UserWarning, match=r"not known to the name mapping.*adapter\.weight"):
        weights.load_params(target, extra, hf_rename(TINY))
    with pytest.raises(ValueError, match=r"adapter\.weight"):
        weights.load_params(target, extra, hf_rename(TINY), unknown="error")
    # Ignored names (pooler, position_ids) pass silently; a tensor present twice does not.
    ignored = tensors + [("embeddings.position_ids", np.arange(20)[None])]
    weights.load_params(target, ignored, hf_rename(TINY), unknown="error")
    named = dict(tensors)
    dup = tensors + [
        ("bert.encoder.layer.1.output.dense.bias", named["encoder.layer.1.output.dense.bias"])
    ]
    with pytest.raises(ValueError, match="a second time"):
        weights.load_params(target, dup, hf_rename(TINY))


def test_bert_rename_variants():
    scanned = hf_rename(TINY.replace(scan_layers=True))
    path, layer, transform = scanned("roberta.encoder.layer.1.attention.output.LayerNorm.gamma")
    assert path == ("encoder", "layers", "attention", "output", "LayerNorm", "scale")
    assert layer == 1 and transform is None
    path, layer, transform = hf_rename(TINY)("encoder.layer.1.attention.self.value.weight")
    assert path == ("encoder", "layers_1", "attention", "value", "kernel") and layer is None
    np.testing.assert_array_equal(
        transform(np.arange(6).reshape(2, 3)), np.arange(6).reshape(2, 3).T
    )
    assert hf_rename(TINY)("bert.embeddings.LayerNorm.beta")[0] == (
        "embeddings",
        "LayerNorm",
        "bias",
    )
    assert hf_rename(TINY)("cls.predictions.bias") is None
    with_head = hf_rename(TINY, include_head=True)
    assert with_head("bert.pooler.dense.weight")[0] == ("head", "dense", "kernel")
    for bad in ("word_embeddings.weight", "encoder.layer.0.attention.self.rotary.weight"):
        with pytest.raises(KeyError):
            hf_rename(TINY)(bad)
    with pytest.raises(KeyError, match="no Hugging Face name for encoder/extra/kernel"):
        hf_inverse_rename(TINY)(("encoder", "extra", "kernel"))


def test_missing_checkpoint_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither model.safetensors"):
        weights.safetensors_files(tmp_path)
    with pytest.raises(FileNotFoundError):
        weights.safetensors_files(tmp_path / "nope")


def test_every_float_dtype_reads_back_through_the_library_or_the_fp8_path(tmp_path):
    """BF16 comes from safetensors' numpy backend; FP8 (which that backend cannot read) from
    its byte range. The written header is what the library itself reads."""
    dtypes = {
        "bf": ml_dtypes.bfloat16,
        "e4": ml_dtypes.float8_e4m3fn,
        "e5": ml_dtypes.float8_e5m2,
        "f16": np.float16,
        "i8": np.int8,
    }
    values = np.array([[0.5, -1.0, 2.0], [3.0, 0.25, -4.0]], np.float32)
    tree = {k: {"w": values.astype(d)} for k, d in dtypes.items()}
    file = tmp_path / "m.safetensors"
    weights.save_safetensors(tree, file, lambda p: [(f"{p[0]}.weight", None, None)])
    with safe_open(str(file), "numpy") as f:
        assert f.get_slice("e4.weight").get_dtype() == "F8_E4M3"
        assert f.get_tensor("f16.weight").dtype == np.float16
    back = dict(weights.safetensors_tensors(file))
    for k, d in dtypes.items():
        assert back[f"{k}.weight"].dtype == np.dtype(d)
        np.testing.assert_array_equal(back[f"{k}.weight"], tree[k]["w"])
