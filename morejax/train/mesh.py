"""The device mesh: ('data', 'model') axes, where the frozen base and the batches live.

How the frozen base and the train state are split (`mesh.sharding`): `largest` puts each
matrix over 'model' on its largest divisible axis and replicates the state; `fsdp` splits
base and state matrices over every device; `megatron` is tensor parallelism (column-parallel
q,k,v / gate / up, row-parallel o / down, adapter factors split to match). GSPMD works out
the rest; `auto` picks per mesh shape what measurement chose (results/tpu_plan.md).
Batches are this process's rows of each global batch (`to_global`); `gather` brings a
global array back to every host. Joining a multi-host job is `distributed`'s.
"""

from __future__ import annotations

import math
import re

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from morejax import paths

SHARDINGS = ("auto", "largest", "fsdp", "megatron")
# Projections that fan out (output columns split; their bias too), ones that fan back in
# (input rows split), and token embeddings (split by token).
COLUMN = re.compile(
    r"(.*/)?(q_proj|k_proj|v_proj|gate_proj|up_proj|query|key|value|intermediate/dense"
    r"|lm_head)/(kernel|bias)"
)
ROW = re.compile(r"(.*/)?(o_proj|down_proj|output/dense)/kernel")
EMBEDDING = re.compile(r"(.*/)?(embed_tokens|word_embeddings)/embedding")


def make_mesh(spec, devices=None) -> jax.sharding.Mesh:
    """A ('data', 'model') mesh; `model` > 1 shards the frozen base so that large models fit.

    `devices` (default: this job's) may be another machine's, e.g. a TPU topology's devices
    for compiling ahead of time (`morejax.train.plan`)."""
    processes = jax.process_count() if devices is None else 1
    devices = jax.devices() if devices is None else list(devices)
    n = len(devices)
    model = max(1, spec.model if spec is not None else 1)
    data = spec.data if spec is not None and spec.data > 0 else n // model
    if data < 1 or data * model > n:
        raise ValueError(f"mesh data={data} x model={model} needs more than the {n} devices")
    if processes > 1 and data % processes:
        raise ValueError(
            f"mesh.data={data} must be a multiple of the {processes} processes "
            "(each feeds its own rows); lower mesh.model"
        )
    auto = jax.sharding.AxisType.Auto
    return jax.make_mesh(
        (data, model), ("data", "model"), (auto, auto), devices=devices[: data * model]
    )


# A base replicated on every chip may take up to this share of a device's memory.
REPLICATE_UP_TO = 0.5


def resolve_sharding(name: str, mesh, base_bytes: float = 0, device_bytes=None) -> str:
    """The strategy a run uses. `auto`, from results/tpu_plan.md (LLaMA-7B on v5e-8 / v4-8):
    with a `model` axis, `megatron` (of the strategies that fit, the fewest collective
    bytes); on a data-only mesh the base replicated (`largest`: no collective but the
    adapters' gradients) while it takes at most REPLICATE_UP_TO of a device's memory
    (`device_bytes`; unknown on CPU), else `fsdp`."""
    if name not in SHARDINGS:
        raise ValueError(f"mesh.sharding={name!r}; choose one of {', '.join(SHARDINGS)}")
    if name != "auto":
        return name
    if mesh.shape["model"] > 1:
        return "megatron"
    if mesh.shape["data"] > 1 and device_bytes and base_bytes > REPLICATE_UP_TO * device_bytes:
        return "fsdp"
    return "largest"


def device_memory(mesh) -> float | None:
    """Bytes one device of the mesh holds (None where JAX does not say, e.g. on CPU)."""
    local = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
    stats = local[0].memory_stats() or {}
    return stats.get("bytes_limit")


def _split(x, axis: int, names: tuple[str, ...], mesh) -> P | None:
    """`x` split over the mesh axes `names` on `axis`; None when that does not divide."""
    size = math.prod(mesh.shape[n] for n in names)
    if x.ndim == 0 or size == 1 or x.shape[axis] % size:
        return None
    spec = [None] * x.ndim
    spec[axis % x.ndim] = names if len(names) > 1 else names[0]
    return P(*spec)


def _largest(x, names: tuple[str, ...], mesh, axes=None) -> P | None:
    """Split on the largest of `axes` (default: all) that divides; matrices only."""
    if x.ndim < 2:
        return None
    axes = range(x.ndim) if axes is None else axes
    for a in sorted(axes, key=lambda a: -x.shape[a]):
        spec = _split(x, a, names, mesh)
        if spec is not None:
            return spec
    return None


def _fsdp(x, mesh, axes=None) -> P | None:
    """Over every device, else over 'data' or 'model' alone."""
    for names in (("data", "model"), ("data",), ("model",)):
        spec = _largest(x, names, mesh, axes)
        if spec is not None:
            return spec
    return None


def _megatron_base(path: str, x, mesh) -> P | None:
    if COLUMN.fullmatch(path):
        spec = _split(x, -1, ("model",), mesh)
    elif ROW.fullmatch(path) or EMBEDDING.fullmatch(path):
        spec = _split(x, -2, ("model",), mesh)
    else:
        spec = None
    return spec or _largest(x, ("model",), mesh)


def _megatron_state(path: str, x, mesh) -> P | None:
    """Adapter factors (and their optimizer moments) split like the kernel they adapt:
    a column-parallel kernel's B, DoRA magnitude m and Full kernel by output column, a
    row-parallel kernel's A and Full kernel by input row; MoRe's factors stay whole."""
    kernel, _, factor = path.rpartition("/")
    if COLUMN.fullmatch(kernel) and factor in ("B", "m", "kernel"):
        return _split(x, -1, ("model",), mesh)
    if ROW.fullmatch(kernel) and factor in ("A", "kernel"):
        return _split(x, -2, ("model",), mesh)
    return None


def base_sharding(mesh, base, strategy: str = "largest"):
    """Where each frozen leaf lives under `strategy` (vectors replicated)."""

    def spec(path, x):
        if strategy == "fsdp":
            return _fsdp(x, mesh)
        if strategy == "megatron":
            return _megatron_base(path, x, mesh)
        return _largest(x, ("model",), mesh)

    return _shardings(mesh, base, spec)


def state_sharding(mesh, state, strategy: str = "largest"):
    """Where adapters and optimizer state live: replicated, except under `fsdp` (matrices
    over every device, on their last two axes: members and layers lead) and `megatron`."""

    def spec(path, x):
        if strategy == "fsdp":
            return _fsdp(x, mesh, axes=range(max(0, x.ndim - 2), x.ndim))
        if strategy == "megatron":
            return _megatron_state(path, x, mesh)
        return None

    return _shardings(mesh, state, spec)


def _shardings(mesh, tree, spec):
    return jax.tree_util.tree_map_with_path(
        lambda kp, x: NamedSharding(mesh, spec(paths.path_str(kp), x) or P()), tree
    )


def replicated(mesh, tree):
    return jax.tree.map(lambda _: NamedSharding(mesh, P()), tree)


def to_global(mesh, local: dict, spec: P) -> dict:
    """This process's numpy rows -> global arrays sharded over 'data' (multi-host safe)."""
    sharding = NamedSharding(mesh, spec)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


def gather(x) -> np.ndarray:
    """A global array on the host of every process."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)
