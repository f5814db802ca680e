"""Joining a multi-host (multi-process) job from the environment.

`initialize_from_env()` runs before anything touches a JAX device. It understands:

- ``MOREJAX_COORDINATOR`` (host:port of process 0), ``MOREJAX_NUM_PROCESSES`` and
  ``MOREJAX_PROCESS_ID``: explicit, for local multi-process tests and plain job arrays;
- ``JAX_COORDINATOR_ADDRESS`` / ``COORDINATOR_ADDRESS`` / ``MOREJAX_DISTRIBUTED=1``, and
  Slurm jobs with ``SLURM_NTASKS`` > 1: JAX's own detection fills in the rest.

On CPU, processes exchange collectives through gloo (TCP), JAX 0.10's default; an unset
(None) `jax_cpu_collectives_implementation` is set to gloo here, since without one a
multi-process CPU run fails at its first cross-process all-reduce.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import jax

__all__ = ["job_from_env", "initialize_from_env", "put"]

_EXPLICIT = ("MOREJAX_COORDINATOR", "MOREJAX_NUM_PROCESSES", "MOREJAX_PROCESS_ID")


def _int(env: Mapping[str, str], key: str) -> int:
    try:
        return int(env[key])
    except ValueError:
        raise ValueError(f"{key}={env[key]!r} is not an integer") from None


def job_from_env(env: Mapping[str, str] | None = None) -> dict | None:
    """Keyword arguments for `jax.distributed.initialize` from the environment, or None
    when it describes a single process ({} means: let JAX detect everything)."""
    env = os.environ if env is None else env
    given = [k for k in _EXPLICIT if env.get(k)]
    if given:
        missing = [k for k in _EXPLICIT if k not in given]
        if missing:
            raise ValueError(
                f"{', '.join(given)} set but not {', '.join(missing)}: a multi-process run needs "
                "MOREJAX_COORDINATOR=host:port, MOREJAX_NUM_PROCESSES=N and MOREJAX_PROCESS_ID=i"
            )
        address = env["MOREJAX_COORDINATOR"]
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"MOREJAX_COORDINATOR={address!r} is not host:port")
        n, i = _int(env, "MOREJAX_NUM_PROCESSES"), _int(env, "MOREJAX_PROCESS_ID")
        if n < 1 or not 0 <= i < n:
            raise ValueError(
                f"MOREJAX_PROCESS_ID={i} must be in [0, MOREJAX_NUM_PROCESSES={n}) and N >= 1"
            )
        if n == 1:
            return None
        return {"coordinator_address": address, "num_processes": n, "process_id": i}
    address = env.get("JAX_COORDINATOR_ADDRESS") or env.get("COORDINATOR_ADDRESS")
    if address:
        return {"coordinator_address": address}
    if env.get("MOREJAX_DISTRIBUTED") not in (None, "", "0"):
        return {}
    if _int({"SLURM_NTASKS": env.get("SLURM_NTASKS") or "1"}, "SLURM_NTASKS") > 1:
        return {}
    return None


def initialize_from_env(env: Mapping[str, str] | None = None) -> bool:
    """Join the multi-host job the environment describes (once); True when this process
    is part of one. Must run before the first JAX computation."""
    if jax.distributed.is_initialized():
        return True
    kwargs = job_from_env(env)
    if kwargs is None:
        return False
    if jax.config.jax_cpu_collectives_implementation is None:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**kwargs)
    return True


def put(tree, shardings):
    """`jax.device_put` that also works when the shardings span processes.

    JAX 0.10 builds a broken array (its `addressable_shards` raise "input arrays must have
    one shard each") when a committed single-device array is put on a sharding over
    several processes; orbax's save and per-device byte counts read those shards. A
    compiled identity makes proper global arrays from each process's identical copy.
    """
    if jax.process_count() == 1:
        return jax.device_put(tree, shardings)
    return jax.jit(lambda t: t, out_shardings=shardings)(tree)
