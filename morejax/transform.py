"""The transform: adapt a model's dense kernels, and run it factored or merged.

`adapt` splits a parameter tree into a frozen `base` and a small `adapters`
tree (adapter factors plus any leaves that train fully). `call` runs a Flax
Linen apply function with both: factored (the default, `x @ K + Δy(x)`, so the
backward pass never forms a full weight gradient) or merged (`K + ΔK`, works
for any function of the params). NNX models go through `nnx_split` / `nnx_call`.
"""

from __future__ import annotations

import dataclasses
import math
import re
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
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

ADAPTER_SUFFIX = "@adapter"  # a kernel's factors sit beside it in `params` as `kernel@adapter`
ALL_LINEAR = "all-linear"
# Kept out of `all-linear`, as PEFT keeps the output layer out: heads train fully or not at all.
HEAD_PATTERN = r"(.*/)?(head|lm_head|classifier|pooler)(/.*)?"
# Named targets, usable as a rule key like `all-linear`. Each holds across the families (BERT /
# RoBERTa, the LLaMA-style decoders; fused Phi-3 kernels count as one matrix, as in PEFT):
# `more-paper` is the MoRe paper's q,k,v, `milora-paper` MiLoRA's q,k,v,up,down.
_Q_K_V = r"self_attn/(q_proj|k_proj|v_proj|qkv_proj)|attention/(query|key|value)"
PRESETS = {
    "attention": rf".*/({_Q_K_V}|self_attn/o_proj|attention/output/dense)/kernel",
    "mlp": r".*/(mlp/(gate_proj|up_proj|down_proj|gate_up_proj)"
    r"|layers(_\d+)?/(intermediate|output)/dense)/kernel",
    "more-paper": rf".*/({_Q_K_V})/kernel",
    "milora-paper": rf".*/({_Q_K_V}|mlp/(up_proj|gate_up_proj|down_proj))/kernel",
}


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


# ----------------------------------------------------------------------------- tree helpers


def _is_kernel(path: tuple, leaf) -> bool:
    return path[-1] == "kernel" and len(getattr(leaf, "shape", ())) >= 2


# ----------------------------------------------------------------------------- rules


def _normalise_rules(rules) -> list[tuple[str, Any]]:
    if rules is None:
        return []
    items = list(rules.items()) if isinstance(rules, Mapping) else list(rules)
    for pattern, _ in items:
        if not isinstance(pattern, str):
            raise TypeError(f"rule patterns must be regex strings, got {pattern!r}")
    return items


def _layout_for(path_s: str, shape, layout) -> Layout:
    if layout is not None:
        if path_s in layout:
            return Layout(*layout[path_s])
        for pattern, lay in layout.items():
            if re.fullmatch(pattern, path_s):
                return Layout(*lay)
    if len(shape) == 2:
        return Layout(0, 1)
    raise ValueError(
        f"kernel {path_s} has shape {tuple(shape)}: its matrix view is ambiguous (scanned layers? "
        "DenseGeneral?). Pass layout=morejax.kernel_layout(model, *example_inputs), or a dict "
        "{path_or_regex: Layout(stack, n_in)}."
    )


def plan(params, rules, *, exclude: Sequence[str] = (), layout=None) -> dict[str, tuple]:
    """{kernel path: (method, Layout)}; a rule that matches nothing is an error."""
    rules = _normalise_rules(rules)
    excluded = compile_patterns(exclude)
    head = re.compile(HEAD_PATTERN)
    kernels = {path_str(p): leaf for p, leaf in flatten_keys(params).items() if _is_kernel(p, leaf)}
    hits = {i: 0 for i in range(len(rules))}
    chosen: dict[str, tuple] = {}
    for path_s, leaf in kernels.items():
        if matches_any(path_s, excluded):
            continue
        for i, (pattern, method) in enumerate(rules):
            if pattern == ALL_LINEAR:
                hit = not head.fullmatch(path_s)
            else:
                hit = re.fullmatch(PRESETS.get(pattern, pattern), path_s) is not None
            if hit:
                hits[i] += 1
                if method is not None:
                    chosen[path_s] = (method, _layout_for(path_s, leaf.shape, layout))
                break
    unmatched = [rules[i][0] for i, n in hits.items() if n == 0]
    if unmatched:
        listing = "\n  ".join(f"{k}  {tuple(v.shape)}" for k, v in kernels.items()) or "(none)"
        raise ValueError(
            f"adapter rule(s) {unmatched} matched no kernel (patterns are fullmatched against "
            f"'/'-joined paths, after `exclude`; named targets: {ALL_LINEAR}, "
            f"{', '.join(PRESETS)}). The kernels are:\n  {listing}"
        )
    return chosen


# ----------------------------------------------------------------------------- adapt / merge


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


def _adapter_items(adapters):
    return flatten_keys(adapters, is_leaf=is_adapter).items()


def merge(base, adapters):
    """Plain params with every kernel rewritten to K + ΔK and trainable leaves put back."""
    flat = flatten_keys(base)
    for path, a in _adapter_items(adapters):
        if isinstance(a, Adapter):
            k = flat[path]
            flat[path] = (k.astype(jnp.float32) + _delta_full(a, k)).astype(k.dtype)
        else:
            flat[path] = a
    return unflatten(flat)


def unmerge(params, adapters):
    """The inverse of `merge`: the frozen base the adapters were merged into."""
    flat = flatten_keys(params)
    for path, a in _adapter_items(adapters):
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


# ------------------------------------------------------------------------ factored call (Linen)


def _factored_params(base, adapters):
    """base + trainable leaves, with each kernel's factors placed beside it as `kernel@adapter`."""
    flat = flatten_keys(base)
    table = {}
    for path, a in _adapter_items(adapters):
        if isinstance(a, Adapter):
            flat[path[:-1] + (path[-1] + ADAPTER_SUFFIX,)] = a.params
            table[path_str(path[:-1])] = (a.method, a.layout, path[-1])
        else:
            flat[path] = a
    # `unflatten` treats the factor dicts as leaves; they are plain dicts Flax can slice under scan.
    return unflatten(flat), table


def _matrix_call(method, params, x, kernel, n_in: int, rng, xk=None):
    d_in, d_out = Layout(0, n_in).matrix_shape(kernel.shape)
    # Adapter params stay float32 here: each method casts its factors to x's dtype where that
    # is safe, and DoRA keeps its magnitude ratio in float32 (a bf16 ratio loses updates).
    x_mat = x.reshape(*x.shape[: x.ndim - n_in], d_in)
    kw = {} if xk is None else {"xk": xk.reshape(*x.shape[: x.ndim - n_in], d_out)}
    dy = method.apply(params, x_mat, kernel.reshape(d_in, d_out), rng=rng, **kw)
    return dy.reshape(*x.shape[: x.ndim - n_in], *kernel.shape[n_in:])


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
        dy = _matrix_call(method, factors, x.astype(y.dtype), kernel, n_in, rng, xk)
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


# ----------------------------------------------------------------------------- NNX


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
            dy = _matrix_call(
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
    for path, a in _adapter_items(adapters):
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


# ----------------------------------------------------------------------------- counting and tables


def count_params(tree) -> int:
    """Number of scalars in a tree of arrays or ShapeDtypeStructs (works under eval_shape)."""
    return sum(math.prod(getattr(x, "shape", ())) for x in jax.tree.leaves(tree))


@dataclasses.dataclass(frozen=True)
class ParamRow:
    path: str
    shape: tuple
    method: str
    trainable: int


@dataclasses.dataclass(frozen=True)
class ParamSummary:
    rows: tuple[ParamRow, ...]
    adapter_params: int  # factors of adapted kernels (what papers report)
    other_trainable: int  # heads, norms, fully trained kernels
    base_params: int  # the frozen model

    @property
    def trainable(self) -> int:
        return self.adapter_params + self.other_trainable

    @property
    def model_params(self) -> int:
        """Size of the original model (adapters of Full/trainable leaves counted once)."""
        return self.base_params + self.other_trainable

    def table(self) -> str:
        """One row per adapted or trainable leaf (layers in numeric order), then the totals."""
        w = max([len(r.path) for r in self.rows] + [4])
        m = max([len(r.method) for r in self.rows] + [6])
        lines = [f"{'path':<{w}}  {'shape':<22} {'method':<{m}} {'trainable':>12}"]
        for r in sorted(self.rows, key=lambda r: _natural(r.path)):
            lines.append(f"{r.path:<{w}}  {str(r.shape):<22} {r.method:<{m}} {r.trainable:>12,}")
        return "\n".join(lines + ["", self.totals()])

    def totals(self) -> str:
        pct = 100.0 * self.adapter_params / max(self.model_params, 1)
        return "\n".join(
            [
                f"adapter params:        {self.adapter_params:>15,}  ({pct:.3f}% of the model)",
                f"other trainable:       {self.other_trainable:>15,}  (heads, norms, full kernels)",
                f"model params:          {self.model_params:>15,}",
            ]
        )

    def __str__(self) -> str:
        return self.table()


def _natural(path: str) -> list:
    """A sort key that puts layers_2 before layers_10."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path)]


def summarize(base, adapters) -> ParamSummary:
    """What was adapted and how many parameters train; shapes suffice (use under eval_shape)."""
    flat_base = flatten_keys(base)
    rows, adapter_n, other_n = [], 0, 0
    for path, a in _adapter_items(adapters):
        if isinstance(a, Adapter):
            n = count_params(a.params)
            adapter_n += n
            shape = tuple(flat_base[path].shape)
            rows.append(ParamRow(path_str(path), shape, _method_str(a.method), n))
        else:
            n = count_params(a)
            other_n += n
            rows.append(ParamRow(path_str(path), tuple(a.shape), "trainable", n))
    return ParamSummary(tuple(rows), adapter_n, other_n, count_params(base))


def _method_str(method) -> str:
    fields = ", ".join(f"{f.name}={getattr(method, f.name)}" for f in dataclasses.fields(method))
    return f"{type(method).__name__}({fields})"


def param_table(base, adapters) -> str:
    return summarize(base, adapters).table()


def count_trainable(adapters) -> int:
    return count_params(adapters)


def cast(tree, dtype, *, adapters=None):
    """Cast floating leaves (e.g. the frozen base to bf16); integer leaves are left alone.

    With `adapters` (from `adapt`), a kernel whose method sets its own
    `residual_dtype` (PiSSA/MiLoRA) gets that dtype instead: a bf16 rounding of
    MiLoRA's residual is the size of the minor components it trains.
    """
    keep = {}
    if adapters is not None:
        for path, a in _adapter_items(adapters):
            want = getattr(a.method, "residual_dtype", None) if isinstance(a, Adapter) else None
            if want is not None:
                keep[path] = jnp.dtype(want)

    def one(kp, x):
        if not jnp.issubdtype(x.dtype, jnp.floating):
            return x
        return x.astype(keep.get(path_keys(kp), dtype))

    return jax.tree_util.tree_map_with_path(one, tree)
