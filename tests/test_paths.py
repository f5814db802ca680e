"""Path strings and key tuples (morejax.paths): rules, checkpoints and exports read these."""

import collections

import jax
import numpy as np
from flax import nnx

import morejax
from morejax import paths
from morejax.train import checkpoints
from morejax.transform import is_adapter

Pair = collections.namedtuple("Pair", "a b")


def test_dict_tree_paths_and_round_trip():
    tree = {"encoder": {"layers_0": {"query": {"kernel": 1, "bias": 2}}}, "head": {"kernel": 3}}
    assert list(paths.flatten(tree)) == [
        "encoder/layers_0/query/bias",
        "encoder/layers_0/query/kernel",
        "head/kernel",
    ]
    keyed = paths.flatten_keys(tree)
    assert list(keyed) == [
        ("encoder", "layers_0", "query", "bias"),
        ("encoder", "layers_0", "query", "kernel"),
        ("head", "kernel"),
    ]
    assert paths.unflatten(keyed) == tree
    assert paths.path_str(("encoder", "layers_0", "query", "kernel")) == (
        "encoder/layers_0/query/kernel"
    )


def test_sequences_and_attributes_print_as_numbers_and_names():
    tree = {"x": [1, (2, 3)], "p": Pair(4, 5)}
    assert list(paths.flatten(tree)) == ["p/a", "p/b", "x/0", "x/1/0", "x/1/1"]
    # Key tuples keep an index as an int; `as_str` gives the strings the paths print.
    assert list(paths.flatten_keys(tree)) == [
        ("p", "a"),
        ("p", "b"),
        ("x", 0),
        ("x", 1, 0),
        ("x", 1, 1),
    ]
    assert ("x", "1", "0") in paths.flatten_keys(tree, as_str=True)
    # A checkpoint's signature uses the same strings.
    sig = checkpoints.signature({"x": [np.zeros(2)], "p": Pair(np.zeros(1), np.ones(3))})
    assert list(sig) == ["p/a", "p/b", "x/0"]


def test_integer_dict_keys_stay_ints_in_key_tuples():
    tree = {"layers": {0: {"kernel": 1}, 1: {"kernel": 2}}}
    assert list(paths.flatten(tree)) == ["layers/0/kernel", "layers/1/kernel"]
    assert list(paths.flatten_keys(tree)) == [("layers", 0, "kernel"), ("layers", 1, "kernel")]
    assert list(paths.flatten_keys(tree, as_str=True)) == [
        ("layers", "0", "kernel"),
        ("layers", "1", "kernel"),
    ]
    assert paths.unflatten(paths.flatten_keys(tree)) == tree


def test_nnx_model_paths():
    class Net(nnx.Module):
        def __init__(self, rngs):
            self.layers = nnx.List([nnx.Linear(3, 4, rngs=rngs), nnx.Linear(4, 2, rngs=rngs)])
            self.out = nnx.Linear(2, 2, rngs=rngs)

    _, params, _, layout = morejax.nnx_split(Net(nnx.Rngs(0)))
    assert list(paths.flatten(params)) == [
        "layers/0/bias",
        "layers/0/kernel",
        "layers/1/bias",
        "layers/1/kernel",
        "out/bias",
        "out/kernel",
    ]
    assert list(layout) == ["layers/0/kernel", "layers/1/kernel", "out/kernel"]
    assert ("layers", 1, "kernel") in paths.flatten_keys(params)


def test_adapter_nodes_as_leaves():
    params = {"dense": {"kernel": np.ones((4, 3), np.float32), "bias": np.zeros(3, np.float32)}}
    _, adapters = morejax.adapt(params, {".*": morejax.LoRA(rank=2)}, jax.random.key(0))
    whole = paths.flatten(adapters, is_leaf=is_adapter)
    assert list(whole) == ["dense/kernel"]
    assert list(paths.flatten(adapters)) == ["dense/kernel/A", "dense/kernel/B"]
    keyed = paths.flatten_keys(adapters, is_leaf=is_adapter, as_str=True)
    assert list(keyed) == [("dense", "kernel")]


def test_flatten_dict_keeps_the_dict_order_and_non_dict_leaves():
    tree = {"b": {"y": 1, "x": None}, "a": [1, 2]}
    assert paths.flatten_dict(tree) == {("b", "y"): 1, ("b", "x"): None, ("a",): [1, 2]}
    assert list(paths.flatten_dict(tree)) == [("b", "y"), ("b", "x"), ("a",)]
