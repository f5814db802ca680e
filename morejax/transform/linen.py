"""Flax Linen models with adapters: `call` runs factored (each nn.Dense / nn.DenseGeneral adds
Δy(x), so the backward pass never forms a full weight gradient) or merged; `kernel_layout`
reads every Dense kernel's matrix view from shapes alone."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax

from morejax.paths import flatten_keys, path_str, unflatten
from morejax.transform.adapter import Adapter, Layout, adapter_items, matrix_call
from morejax.transform.adapting import merge

ADAPTER_SUFFIX = "@adapter"  # a kernel's factors sit beside it in `params` as `kernel@adapter`


def _factored_params(base, adapters):
    """base + trainable leaves, with each kernel's factors placed beside it as `kernel@adapter`."""
    flat = flatten_keys(base)
    table = {}
    for path, a in adapter_items(adapters):
        if isinstance(a, Adapter):
            flat[path[:-1] + (path[-1] + ADAPTER_SUFFIX,)] = a.params
            table[path_str(path[:-1])] = (a.method, a.layout, path[-1])
        else:
            flat[path] = a
    # `unflatten` treats the factor dicts as leaves; they are plain dicts Flax can slice under scan.
    return unflatten(flat), table


def _dense_n_in(module, x) -> int:
    if isinstance(module, nn.DenseGeneral):
        if module.batch_dims:
            raise NotImplementedError(f"{'/'.join(module.path)}: DenseGeneral batch_dims")
        axes = module.axis if isinstance(module.axis, Sequence) else (module.axis,)
        axes = sorted(a % x.ndim for a in axes)
        if axes != list(range(x.ndim - len(axes), x.ndim)):
            raise NotImplementedError(
                f"{'/'.join(module.path)}: factored adapters need the contracted axes last "
                f"(axis={module.axis}); use merged=True"
            )
        return len(axes)
    return 1


def call(apply_fn: Callable, base, adapters, *args, merged: bool = False, **kwargs):
    """Run a Linen `apply_fn({'params': ...}, *args, **kwargs)` with adapters.

    Factored: nn.Dense / nn.DenseGeneral calls add Δy(x). Adapter dropout runs
    when `rngs={'dropout': ...}` is passed, as the model's own dropout does.
    """
    if merged:
        return apply_fn({"params": merge(base, adapters)}, *args, **kwargs)
    params, table = _factored_params(base, adapters)
    seen: set[str] = set()

    def interceptor(next_fun, f_args, f_kwargs, context):
        module = context.module
        if context.method_name != "__call__" or not isinstance(module, (nn.Dense, nn.DenseGeneral)):
            return next_fun(*f_args, **f_kwargs)
        where = "/".join(module.path)
        y = next_fun(*f_args, **f_kwargs)
        if where not in table:
            return y
        method, _, name = table[where]
        seen.add(where)
        x = f_args[0] if f_args else f_kwargs["inputs"]
        kernel = module.get_variable("params", name)
        factors = module.get_variable("params", name + ADAPTER_SUFFIX)
        rng = None
        if getattr(method, "dropout", 0.0) and module.has_rng("dropout"):
            rng = module.make_rng("dropout")
        xk = None
        if method.uses_layer_output:  # the layer's y without its bias
            has_bias = getattr(module, "use_bias", False) and module.has_variable("params", "bias")
            xk = y - module.get_variable("params", "bias") if has_bias else y
        n_in = _dense_n_in(module, x)
        dy = matrix_call(method, factors, x.astype(y.dtype), kernel, n_in, rng, xk)
        return y + dy.astype(y.dtype)

    with nn.intercept_methods(interceptor):
        out = apply_fn({"params": params}, *args, **kwargs)
    missing = sorted(set(table) - seen)
    if missing:
        raise ValueError(
            f"adapted kernels {missing} were never used by an nn.Dense/nn.DenseGeneral call, so "
            "the factored path cannot add their Δy; run with merged=True"
        )
    return out


def kernel_layout(module: nn.Module, *args, **kwargs) -> dict[str, Layout]:
    """The exact Layout of every Dense/DenseGeneral kernel of a Linen module, from shapes alone."""
    inside: dict[str, tuple[int, int]] = {}

    def interceptor(next_fun, f_args, f_kwargs, context):
        out = next_fun(*f_args, **f_kwargs)
        mod = context.module
        if context.method_name == "__call__" and isinstance(mod, (nn.Dense, nn.DenseGeneral)):
            x = f_args[0] if f_args else f_kwargs["inputs"]
            kernel = mod.get_variable("params", "kernel")
            inside["/".join(mod.path) + "/kernel"] = (kernel.ndim, _dense_n_in(mod, x))
        return out

    def init(key):
        with nn.intercept_methods(interceptor):
            return module.init(key, *args, **kwargs)

    shapes = jax.eval_shape(init, jax.random.key(0))["params"]
    out = {}
    for path, leaf in flatten_keys(shapes).items():
        if path_str(path) in inside:
            ndim, n_in = inside[path_str(path)]
            out[path_str(path)] = Layout(leaf.ndim - ndim, n_in)
    return out
