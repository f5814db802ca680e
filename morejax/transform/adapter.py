"""One adapted kernel: its matrix view (`Layout`), its factors and method (`Adapter`), and the
method's Δy on that matrix view, which the Linen and NNX calls share."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax

from morejax.paths import flatten_keys


class Layout(NamedTuple):
    """How a stored kernel is viewed as a matrix: `stack` leading axes (nn.scan), then
    `n_in` contracted axes, then the output axes."""

    stack: int = 0
    n_in: int = 1

    def matrix_shape(self, shape) -> tuple[int, int]:
        core = shape[self.stack :]
        return math.prod(core[: self.n_in]), math.prod(core[self.n_in :])


@jax.tree_util.register_pytree_with_keys_class
class Adapter:
    """One adapted kernel's factors; the method and layout ride along as static data."""

    def __init__(self, params: Mapping[str, Any], method, layout: Layout):
        self.params = dict(params)
        self.method = method
        self.layout = layout

    def tree_flatten_with_keys(self):
        keys = sorted(self.params)
        children = [(jax.tree_util.DictKey(k), self.params[k]) for k in keys]
        return children, (tuple(keys), self.method, self.layout)

    @classmethod
    def tree_unflatten(cls, aux, children):
        keys, method, layout = aux
        return cls(dict(zip(keys, children)), method, layout)

    def __repr__(self):
        shapes = {k: getattr(v, "shape", v) for k, v in self.params.items()}
        return f"Adapter({self.method}, {self.layout}, {shapes})"


def is_adapter(x) -> bool:
    return isinstance(x, Adapter)


def adapter_items(adapters):
    """(path, Adapter or trainable leaf) of an adapters tree, Adapters kept whole."""
    return flatten_keys(adapters, is_leaf=is_adapter).items()


def matrix_call(method, params, x, kernel, n_in: int, rng, xk=None):
    """Δy of one adapter for inputs `x` whose last `n_in` axes the kernel contracts; `xk` is
    the layer's own x @ K, for methods that use it."""
    d_in, d_out = Layout(0, n_in).matrix_shape(kernel.shape)
    # Adapter params stay float32 here: each method casts its factors to x's dtype where that
    # is safe, and DoRA keeps its magnitude ratio in float32 (a bf16 ratio loses updates).
    x_mat = x.reshape(*x.shape[: x.ndim - n_in], d_in)
    kw = {} if xk is None else {"xk": xk.reshape(*x.shape[: x.ndim - n_in], d_out)}
    dy = method.apply(params, x_mat, kernel.reshape(d_in, d_out), rng=rng, **kw)
    return dy.reshape(*x.shape[: x.ndim - n_in], *kernel.shape[n_in:])
