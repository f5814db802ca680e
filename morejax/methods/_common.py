"""Small pieces the adapter methods share."""

from __future__ import annotations

import math
import numbers

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


def lowrank_init(method, key, kernel) -> dict:
    """LoRA's start (DoRA's too): A drawn as PEFT draws it, B = 0, so ΔK = 0."""
    d_in, d_out = kernel.shape
    check_rank_fits(method, kernel.shape)
    a = kaiming_uniform_a(key, d_in, method.rank)
    return {"A": a, "B": jnp.zeros((method.rank, d_out), jnp.float32)}


def lowrank_apply(a, b, x, scale):
    return scale * ((x @ a.astype(x.dtype)) @ b.astype(x.dtype))


def lowrank_delta(a, b, scale):
    return scale * jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)


# ----------------------------------------------------------------------------- argument checks
# Fiddle builds the method dataclasses from configs, so these fire when a config is built.


def check_int(method, name: str, low: int = 1) -> None:
    value = getattr(method, name)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(
            f"{type(method).__name__}.{name}={value!r} is out of range: it must be an integer "
            f"in [{low}, inf)"
        )


def check_dropout(method) -> None:
    value = method.dropout
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < 1:
        raise ValueError(
            f"{type(method).__name__}.dropout={value!r} is out of range: it must be a rate in "
            "[0, 1) (0 turns dropout off)"
        )


def check_alpha(method) -> None:
    value = method.alpha
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
        raise ValueError(
            f"{type(method).__name__}.alpha={value!r} is out of range: it must be a number in "
            "(0, inf) (the scale is alpha / rank)"
        )


def check_lowrank(method) -> None:
    """LoRA's and DoRA's hyperparameters: rank, alpha, dropout."""
    check_int(method, "rank")
    check_alpha(method)
    check_dropout(method)


def check_rank_fits(method, kernel_shape) -> None:
    """A rank above min(d_in, d_out) only adds redundant parameters (and breaks the SVD slice)."""
    d_in, d_out = kernel_shape
    if method.rank > min(d_in, d_out):
        raise ValueError(
            f"{type(method).__name__}.rank={method.rank} does not fit a {tuple(kernel_shape)} "
            f"kernel: the rank must be in [1, {min(d_in, d_out)}] (min(d_in, d_out)); lower "
            "the rank or leave this kernel out of the rules"
        )
