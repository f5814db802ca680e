"""Setting up a run: mesh, model, one frozen base, adapters per member, evaluation data.

Each member's seed draws its adapters and its fresh head; the base (pretrained weights in
`base_dtype`, PiSSA/MiLoRA residuals) is shared. `init_error` checks that the adapted
model starts where the base model is.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

import morejax
from morejax.train import distributed
from morejax.train.config import Experiment
from morejax.train.inputs import (
    batch_keys,
    batches,
    eval_splits,
    load_split,
    task_kind,
    truncation_warning,
)
from morejax.train.logger import say
from morejax.train.mesh import (
    base_sharding,
    device_memory,
    gather,
    make_mesh,
    resolve_sharding,
    to_global,
)
from morejax.train.model import (
    Loaded,
    abstract_params,
    fresh_head,
    kernel_layout,
    load_model,
    model_inputs,
    packed_inputs,
)
from morejax.train.step import make_forward


def members(exp: Experiment) -> tuple[list[int], list[float]] | None:
    """Per-member (seeds, peak learning rates) of a vectorised run; None for a single run."""
    seeds, lrs = list(exp.vmap_seeds or ()), [float(x) for x in exp.vmap_learning_rates or ()]
    if not seeds and not lrs:
        return None
    n = max(len(seeds), len(lrs))
    seeds, lrs = seeds or [exp.seed], lrs or [float(exp.optimizer.learning_rate)]
    if len(seeds) not in (1, n) or len(lrs) not in (1, n):
        raise ValueError(f"vmap_seeds ({len(seeds)}) and vmap_learning_rates ({len(lrs)}) differ")
    return seeds * (n // len(seeds)), lrs * (n // len(lrs))


def run_members(exp: Experiment) -> tuple[list[int], list[float], int | None]:
    """(seeds, peak learning rates, member count or None for a single run)."""
    vec = members(exp)
    if vec is None:
        return [exp.seed], [float(exp.optimizer.learning_rate)], None
    return vec[0], vec[1], len(vec[0])


def seed_keys(seed: int):
    """(adapter init key, dropout key) of one seed: a vmapped member uses the same ones."""
    root = jax.random.key(seed)
    return jax.random.fold_in(root, 0), jax.random.fold_in(root, 1)


@dataclasses.dataclass
class Setup:
    """What training and evaluation share: mesh, model, frozen base, initial adapters, data."""

    mesh: Any
    kind: str
    loaded: Loaded
    base: Any
    adapters: Any
    seeds: list
    lrs: list
    n_members: int | None
    dev_batches: dict
    init_error: float | None = None
    test_overlap: dict = dataclasses.field(default_factory=dict)  # split -> Overlap.as_dict()
    sharding: str = "largest"  # how base and state are split (`mesh.resolve_sharding`)


def with_fresh_head(loaded: Loaded, seed: int):
    """The loaded params with the classification head (if any) drawn from `seed`."""
    head = fresh_head(loaded, seed)
    if head is None:
        return loaded.params
    return {**loaded.params, "head": morejax.cast(head, params_dtype(loaded.params))}


def adapt_members(exp: Experiment, member_params: list, seeds: list, layout):
    """(frozen base, adapters per member): the seed draws the adapters (and, in
    `member_params`, the fresh head). The base (pretrained weights in `base_dtype`,
    PiSSA/MiLoRA residuals) is the same for every seed, so one copy is kept. Trainable
    leaves stay float32 whatever the base dtype.
    """
    base, adapters = None, []
    for seed, params in zip(seeds, member_params):
        b, a = morejax.adapt(
            params,
            exp.all_rules(),
            seed_keys(seed)[0],
            exclude=exp.exclude,
            trainable=exp.trainable,
            layout=layout,
        )
        base = b if base is None else base
        adapters.append(morejax.cast(a, jnp.float32))
    return base, adapters


def in_base_dtype(exp: Experiment, params):
    """The model's parameters in `base_dtype`: adapters start exactly on them (DoRA's
    magnitudes and PiSSA/MiLoRA's SVD see the weights as they are stored)."""
    if exp.base_dtype == "float32":
        return params
    return morejax.cast(params, jnp.dtype(exp.base_dtype))


def stack_members(adapted: list, n_members: int | None):
    """The adapters as a run holds them: one tree, members stacked on a leading axis."""
    if n_members is None:
        return adapted[0]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *adapted)


def params_dtype(params):
    floats = [x.dtype for x in jax.tree.leaves(params) if jnp.issubdtype(x.dtype, jnp.floating)]
    return floats[0] if floats else jnp.float32


def init_error(forward, model, family: str, reference, base, adapters, batch) -> float:
    """Relative output change of the adapted model at step 0 against the unadapted one.

    Zero for LoRA / MoRe / DoRA; for PiSSA / MiLoRA it is the rounding of the residual to the
    base dtype, which is the size of the minor components that MiLoRA trains.
    """

    def plain(params, batch):
        inputs = model_inputs(family, batch)
        out = model.apply({"params": params}, *inputs, deterministic=True, **packed_inputs(batch))
        return out[0] if isinstance(out, tuple) else out

    # A few rows suffice; packed rows and their examples do not slice apart, so all of them.
    cut = slice(None) if "cls_index" in batch else slice(4)
    rows = {k: gather(v)[cut] for k, v in batch.items()}
    want = np.asarray(jax.jit(plain)(reference, rows), np.float64)
    got = np.asarray(jax.jit(forward)(adapters, base, rows, None), np.float64)
    return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30))


@dataclasses.dataclass
class Adapted:
    """A run's model as loaded and its adapters as drawn, before any mesh or data."""

    loaded: Loaded  # params in `base_dtype`
    member_params: list  # per member: the params with its fresh head
    base: Any  # the frozen base the members share
    adapters: list  # per member: its initial adapters
    seeds: list
    lrs: list
    n_members: int | None


def load_adapted(exp: Experiment, loaded: Loaded | None = None) -> Adapted:
    """The run's model and each member's fresh head and initial adapters, as `setup` builds
    them: what `morejax export` / `import` need without the mesh or the evaluation data.

    `loaded` (its params already in `base_dtype`) draws new adapters on a model without
    reading its weights again. In a multi-host job, call it after
    `distributed.initialize_from_env` (`setup` does).
    """
    seeds, lrs, n = run_members(exp)
    if loaded is None:
        loaded = load_model(exp.model, seed=seeds[0])
        loaded.params = in_base_dtype(exp, loaded.params)
    layout = kernel_layout(loaded.model, loaded.family, loaded.params)
    member_params = [with_fresh_head(loaded, seed) for seed in seeds]
    base, adapters = adapt_members(exp, member_params, seeds, layout)
    return Adapted(loaded, member_params, base, adapters, seeds, lrs, n)


def setup(exp: Experiment, adapted: Adapted | None = None) -> Setup:
    """The run's mesh, model, base, adapters and evaluation data; `adapted` (from
    `load_adapted`, left as it is) saves loading the model again. Its adapters become the
    run's state, which a train step donates: draw new ones for another run."""
    distributed.initialize_from_env()
    mesh = make_mesh(exp.mesh)
    kind = task_kind(exp)
    a = adapted if adapted is not None else load_adapted(exp)
    seeds, lrs, n = a.seeds, a.lrs, a.n_members
    loaded, member_params, base = a.loaded, a.member_params, a.base
    adapters = stack_members(a.adapters, n)

    # The evaluation split(s) as global device arrays, built once.
    granule = math.lcm(mesh.shape["data"], jax.process_count())
    eval_bs = int(math.ceil(exp.data.eval_batch_size / granule) * granule)
    keys = batch_keys(exp.data, kind)
    dev, overlaps = {}, {}
    for split in eval_splits(exp.data):
        source = load_split(exp.data, split, exp.data.eval_limit, exp.model.num_labels)
        if source.overlap is not None:
            overlaps[split] = source.overlap.as_dict()
        warning = truncation_warning(exp.data, kind, source, loaded.tokenizer, split)
        if warning:
            say(warning)
        dev[split] = [
            to_global(mesh, {k: b[k] for k in keys}, P("data"))
            for b in batches(
                exp.data,
                kind,
                source,
                loaded.tokenizer,
                eval_bs,
                train=False,
                num_labels=exp.model.num_labels,
                groups=granule,
            )
        ]

    error = None
    if exp.init_check:
        first = next(iter(dev.values()))[0]
        forward = make_forward(loaded.model, loaded.family)
        error = init_error(
            forward, loaded.model, loaded.family, member_params[0], base, a.adapters[0], first
        )
    del member_params, a
    loaded = dataclasses.replace(loaded, params=None)
    nbytes = sum(x.nbytes for x in jax.tree.leaves(base))
    sharding = resolve_sharding(sharding_of(exp), mesh, nbytes, device_memory(mesh))
    base = distributed.put(base, base_sharding(mesh, base, sharding))
    return Setup(mesh, kind, loaded, base, adapters, seeds, lrs, n, dev, error, overlaps, sharding)


def sharding_of(exp: Experiment) -> str:
    return exp.mesh.sharding if exp.mesh is not None else "auto"


@dataclasses.dataclass
class Shapes:
    """A run's model, frozen base and adapters as `setup` builds them, as shapes only
    (jax.ShapeDtypeStruct): nothing is read or allocated."""

    model: Any
    family: str
    kind: str
    params: Any  # the model's parameters as loaded, before `base_dtype`
    base: Any
    adapters: Any  # members stacked when vectorised
    member: Any  # one member's adapters
    seeds: list
    lrs: list
    n_members: int | None


def shapes(exp: Experiment) -> Shapes:
    seeds, lrs, n = run_members(exp)
    model, params = abstract_params(exp.model)
    layout = kernel_layout(model, exp.model.family, params)

    def build(params):
        params = in_base_dtype(exp, params)
        base, adapted = adapt_members(exp, [params] * len(seeds), seeds, layout)
        return base, stack_members(adapted, n), adapted[0]

    base, adapters, member = jax.eval_shape(build, params)
    return Shapes(
        model, exp.model.family, task_kind(exp), params, base, adapters, member, seeds, lrs, n
    )


def param_summary(exp: Experiment):
    """The adapted-parameter summary from shapes alone (no weights are read or allocated)."""
    model, shapes = abstract_params(exp.model)
    layout = kernel_layout(model, exp.model.family, shapes)

    def adapt(params):
        key = jax.random.key(exp.seed)
        return morejax.adapt(
            params,
            exp.all_rules(),
            key,
            exclude=exp.exclude,
            trainable=exp.trainable,
            layout=layout,
        )

    base, adapters = jax.eval_shape(adapt, shapes)
    return morejax.summarize(base, adapters)
