"""Parameter paths as '/'-joined strings: what rules, masks and tables match against."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import jax


def _key_str(k) -> str:
    if isinstance(k, jax.tree_util.DictKey):
        return str(k.key)
    if isinstance(k, jax.tree_util.GetAttrKey):
        return k.name
    if isinstance(k, jax.tree_util.SequenceKey):
        return str(k.idx)
    if isinstance(k, jax.tree_util.FlattenedIndexKey):
        return str(k.key)
    return str(k)


def path_str(keypath) -> str:
    return "/".join(_key_str(k) for k in keypath)


def flatten(tree) -> dict[str, object]:
    """Leaves by path string, in tree order."""
    return {path_str(kp): leaf for kp, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def unflatten(flat: Mapping[tuple, Any]) -> dict:
    """Nested dicts from {key tuple: leaf}; the inverse of a dict tree's flattening."""
    out: dict = {}
    for path, leaf in flat.items():
        node = out
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = leaf
    return out


def compile_patterns(patterns: Iterable[str] | str) -> list[re.Pattern]:
    if isinstance(patterns, str):
        patterns = [patterns]
    return [re.compile(p) for p in patterns]


def matches_any(path: str, patterns: list[re.Pattern]) -> bool:
    return any(p.fullmatch(path) for p in patterns)
