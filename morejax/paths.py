"""Parameter paths: the one place trees are flattened, unflattened and their paths printed.

A path string is the key path joined with '/' (`encoder/layers_0/query/kernel`): what rules,
masks, tables and checkpoint signatures match against. A list index prints as its number.
Key tuples keep each key as the tree holds it (a list index or an integer dict key stays an
int, so a tuple rebuilds the tree and indexes NNX modules); `as_str=True` gives all-string
tuples, which compare with paths built from file names.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
from flax import traverse_util


def path_str(keypath) -> str:
    """'/'-joined keys of a jax key path or of a key tuple (dict keys, names, indices)."""
    return jax.tree_util.keystr(tuple(keypath), simple=True, separator="/")


def path_keys(keypath) -> tuple:
    """The keys of a jax key path as the tree holds them (ints stay ints)."""
    return tuple(_key(k) for k in keypath)


def _key(k):
    if isinstance(k, (jax.tree_util.DictKey, jax.tree_util.FlattenedIndexKey)):
        return k.key
    if isinstance(k, jax.tree_util.GetAttrKey):
        return k.name
    if isinstance(k, jax.tree_util.SequenceKey):
        return k.idx
    return k


def flatten(tree, *, is_leaf: Callable[[Any], bool] | None = None) -> dict[str, Any]:
    """Leaves by path string, in tree order."""
    leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)[0]
    return {path_str(kp): leaf for kp, leaf in leaves}


def flatten_keys(
    tree, *, is_leaf: Callable[[Any], bool] | None = None, as_str: bool = False
) -> dict[tuple, Any]:
    """Leaves by key tuple, in tree order; `unflatten` inverts it for a tree of dicts."""
    leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)[0]
    if as_str:
        return {tuple(str(k) for k in path_keys(kp)): leaf for kp, leaf in leaves}
    return {path_keys(kp): leaf for kp, leaf in leaves}


def flatten_dict(tree: Mapping) -> dict[tuple[str, ...], Any]:
    """A nested dict by string key tuples in its own key order, anything not a dict a leaf.

    Not a pytree flattening: safetensors files are written in this order, and a `None` or
    a list is kept as one leaf.
    """
    return {tuple(str(k) for k in p): v for p, v in traverse_util.flatten_dict(tree).items()}


def unflatten(flat: Mapping[tuple, Any]) -> dict:
    """Nested dicts from {key tuple: leaf}; the inverse of a dict tree's flattening."""
    return traverse_util.unflatten_dict(dict(flat))


def compile_patterns(patterns: Iterable[str] | str) -> list[re.Pattern]:
    if isinstance(patterns, str):
        patterns = [patterns]
    return [re.compile(p) for p in patterns]


def matches_any(path: str, patterns: list[re.Pattern]) -> bool:
    return any(p.fullmatch(path) for p in patterns)
