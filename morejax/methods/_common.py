"""Small pieces the adapter methods share."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def dropout(x, rate: float, rng):
    """Inverted dropout; identity when no rng is given (evaluation) or rate is 0."""
    if rng is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def kaiming_uniform_a(key, d_in: int, rank: int):
    """PEFT's LoRA A init: kaiming_uniform_(a=sqrt(5)) on a (r, d_in) weight is U(±1/sqrt(d_in))."""
    bound = 1.0 / math.sqrt(d_in)
    return jax.random.uniform(key, (d_in, rank), jnp.float32, -bound, bound)


def lowrank_apply(a, b, x, scale):
    return scale * ((x @ a.astype(x.dtype)) @ b.astype(x.dtype))


def lowrank_delta(a, b, scale):
    return scale * jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)
