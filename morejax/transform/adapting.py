"""Adapting a parameter tree and folding adapters back in: `adapt` splits params into a frozen
base and the adapters, `merge` / `unmerge` write K ± ΔK, `cast` sets the base's dtype."""

from __future__ import annotations

import zlib

import jax
import jax.numpy as jnp

from morejax.paths import (
    compile_patterns,
    flatten_keys,
    matches_any,
    path_keys,
    path_str,
    unflatten,
)
from morejax.transform.adapter import Adapter, Layout, adapter_items
from morejax.transform.targets import plan


def _stacked(fn, n: int):
    for _ in range(n):
        fn = jax.vmap(fn)
    return fn


def _kernel_key(key, path_s: str):
    """A key per kernel from its path, so adding a rule never changes another kernel's init."""
    return jax.random.fold_in(key, zlib.crc32(path_s.encode()) & 0x7FFFFFFF)


def _init_one(method, lay: Layout, key, kernel):
    d_in, d_out = lay.matrix_shape(kernel.shape)
    core = kernel.shape[lay.stack :]
    stack_shape = kernel.shape[: lay.stack]
    keys = jax.random.split(key, stack_shape) if lay.stack else key

    def init_matrix(k, w):
        params, new_w = method.init(k, w.reshape(d_in, d_out))
        return params, new_w.reshape(core)

    return _stacked(init_matrix, lay.stack)(keys, kernel)


def adapt(params, rules, key, *, exclude=(), trainable=(), layout=None):
    """Split `params` into (frozen base, adapters).

    rules: ordered `{regex: method}` (first match wins; `None` as method keeps a
    kernel frozen; the key 'all-linear' matches every non-head kernel). Patterns
    are fullmatched against '/'-joined kernel paths. `trainable`: regexes of
    leaves (heads, norms) that move into the adapters and train fully.
    """
    chosen = plan(params, rules, exclude=exclude, layout=layout)
    train_pats = compile_patterns(trainable)
    flat = flatten_keys(params)
    base, adapters = {}, {}
    for path, leaf in flat.items():
        path_s = path_str(path)
        if path_s in chosen:
            method, lay = chosen[path_s]
            if method.trains_kernel:
                adapters[path] = leaf
                continue
            factors, new_kernel = _init_one(method, lay, _kernel_key(key, path_s), leaf)
            base[path] = new_kernel
            adapters[path] = Adapter(factors, method, lay)
        elif matches_any(path_s, train_pats):
            adapters[path] = leaf
        else:
            base[path] = leaf
    if trainable and not any(
        matches_any(path_str(p), train_pats)
        for p in adapters
        if not isinstance(adapters[p], Adapter)
    ):
        raise ValueError(
            f"trainable patterns {list(trainable)} matched no parameter; paths look like "
            f"{[path_str(p) for p in list(flat)[:8]]}"
        )
    return unflatten(base), unflatten(adapters)


def _delta_full(adapter: Adapter, kernel):
    lay = adapter.layout
    d_in, d_out = lay.matrix_shape(kernel.shape)
    core = kernel.shape[lay.stack :]

    def one(params, w):
        return adapter.method.delta(params, w.reshape(d_in, d_out)).reshape(core)

    return _stacked(one, lay.stack)(adapter.params, kernel)


def merge(base, adapters):
    """Plain params with every kernel rewritten to K + ΔK and trainable leaves put back."""
    flat = flatten_keys(base)
    for path, a in adapter_items(adapters):
        if isinstance(a, Adapter):
            k = flat[path]
            flat[path] = (k.astype(jnp.float32) + _delta_full(a, k)).astype(k.dtype)
        else:
            flat[path] = a
    return unflatten(flat)


def unmerge(params, adapters):
    """The inverse of `merge`: the frozen base the adapters were merged into."""
    flat = flatten_keys(params)
    for path, a in adapter_items(adapters):
        if isinstance(a, Adapter):
            if a.method.merge_loses:
                raise ValueError(
                    f"{path_str(path)}: a merged {type(a.method).__name__} kernel does not "
                    f"determine its base ({a.method.merge_loses}); keep the base instead of "
                    "unmerging"
                )
            k = flat[path]
            flat[path] = (k.astype(jnp.float32) - _delta_full(a, k)).astype(k.dtype)
        else:
            del flat[path]
    return unflatten(flat)


def cast(tree, dtype, *, adapters=None):
    """Cast floating leaves (e.g. the frozen base to bf16); integer leaves are left alone.

    With `adapters` (from `adapt`), a kernel whose method sets its own
    `residual_dtype` (PiSSA/MiLoRA) gets that dtype instead: a bf16 rounding of
    MiLoRA's residual is the size of the minor components it trains.
    """
    keep = {}
    if adapters is not None:
        for path, a in adapter_items(adapters):
            want = getattr(a.method, "residual_dtype", None) if isinstance(a, Adapter) else None
            if want is not None:
                keep[path] = jnp.dtype(want)

    def one(kp, x):
        if not jnp.issubdtype(x.dtype, jnp.floating):
            return x
        return x.astype(keep.get(path_keys(kp), dtype))

    return jax.tree_util.tree_map_with_path(one, tree)
