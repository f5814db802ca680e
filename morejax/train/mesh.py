"""The device mesh: ('data', 'model') axes, where the frozen base and the batches live.

Batches are this process's rows of each global batch (`to_global`); `gather` brings a
global array back to every host. Joining a multi-host job is `distributed`'s.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P


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


def base_sharding(mesh, base):
    """Each frozen matrix split over 'model' on its largest divisible axis; the rest replicated."""
    m = mesh.shape["model"]

    def spec(x):
        for a in sorted(range(x.ndim), key=lambda a: -x.shape[a]):
            if m > 1 and x.ndim >= 2 and x.shape[a] % m == 0:
                return NamedSharding(
                    mesh, P(*[("model" if i == a else None) for i in range(x.ndim)])
                )
        return NamedSharding(mesh, P())

    return jax.tree.map(spec, base)


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
