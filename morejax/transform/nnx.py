"""Flax NNX models with adapters: `nnx_split` turns a model into pure pytrees for `adapt`,
`nnx_call` rebuilds it with each adapted Linear / LinearGeneral adding its Δy."""

from __future__ import annotations

from collections.abc import Callable

import jax

from morejax.paths import flatten_keys, path_str, unflatten
from morejax.transform.adapter import Adapter, Layout, adapter_items, matrix_call
from morejax.transform.adapting import merge


def nnx_split(model):
    """An NNX model as pure pytrees: (graphdef, params, rest, layout).

    `params` is a plain dict for `adapt`; `layout` gives each Linear/LinearGeneral
    kernel's matrix view; `rest` is the non-parameter state (rng counters...).
    """
    from flax import nnx

    graphdef, params_state, rest = nnx.split(model, nnx.Param, ...)
    layout = {}
    for path, node in nnx.iter_graph(model):
        if isinstance(node, nnx.Linear):
            layout[path_str(path) + "/kernel"] = Layout(0, 1)
        elif isinstance(node, nnx.LinearGeneral):
            layout[path_str(path) + "/kernel"] = Layout(0, len(node.in_features))
    return graphdef, params_state.to_pure_dict(), rest, layout


_NNX_WRAPPED: dict[type, type] = {}


def _nnx_adapted_class(cls):
    """A subclass whose __call__ adds the Δy of the adapter attached to the instance."""
    if cls not in _NNX_WRAPPED:

        def __call__(self, x, *args, **kwargs):
            y = cls.__call__(self, x, *args, **kwargs)
            adapter, rng = self.__dict__["_morejax_adapter"]
            kernel = self.kernel[...]
            dy = matrix_call(
                adapter.method, adapter.params, x.astype(y.dtype), kernel, adapter.layout.n_in, rng
            )
            return y + dy.astype(y.dtype)

        _NNX_WRAPPED[cls] = type(f"Adapted{cls.__name__}", (cls,), {"__call__": __call__})
    return _NNX_WRAPPED[cls]


def nnx_call(fn: Callable, graphdef, base, adapters, rest, *args, merged=False, rng=None, **kw):
    """`fn(model, *args, **kw)` on the NNX model rebuilt from pure pytrees.

    Factored (default): each adapted Linear/LinearGeneral adds Δy(x); `rng`
    (a key) turns adapter dropout on. Merged: kernels hold K + ΔK.
    """
    from flax import nnx

    if merged:
        return fn(nnx.merge(graphdef, merge(base, adapters), rest), *args, **kw)
    flat = flatten_keys(base)
    wrapped = []
    for path, a in adapter_items(adapters):
        if isinstance(a, Adapter):
            wrapped.append((path[:-1], a))
        else:
            flat[path] = a
    model = nnx.merge(graphdef, unflatten(flat), rest)
    for i, (module_path, a) in enumerate(wrapped):
        module = model
        for k in module_path:
            module = module[k] if isinstance(k, int) else getattr(module, k)
        key = None
        if rng is not None and getattr(a.method, "dropout", 0.0):
            key = jax.random.fold_in(rng, i)
        module.__dict__["_morejax_adapter"] = (a, key)
        module.__class__ = _nnx_adapted_class(type(module))
    return fn(model, *args, **kw)
