"""PiSSA and MiLoRA: LoRA initialised from one end of the kernel's spectrum.

PiSSA takes the r largest singular components, MiLoRA the r smallest; both move
them out of the frozen kernel into (A, B) so the model's output is unchanged.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from morejax.methods import _common
from morejax.methods.base import Method

_STORAGE = jnp.float32  # adapters train in float32 whatever the base dtype


def svd_split(kernel, rank: int, scale: float, largest: bool, residual_dtype=None):
    """(A, B, residual kernel) with residual + scale·A@B == kernel.

    A full thin SVD in float32 (randomised SVD would only find the top
    components, useless for MiLoRA). The residual is computed from the factors
    after they are rounded to their storage dtype, at HIGHEST precision, so
    that the identity holds for the numbers actually stored. It is stored in
    `residual_dtype` (None: the kernel's dtype).
    """
    d_in, d_out = kernel.shape
    if not 0 < rank <= min(d_in, d_out):
        raise ValueError(
            f"rank {rank} does not fit a {tuple(kernel.shape)} kernel: it must be in "
            f"[1, {min(d_in, d_out)}] (min(d_in, d_out)); lower the rank or leave this kernel out"
        )
    k32 = kernel.astype(jnp.float32)
    # Flax kernel K = Wᵀ, so the SVD of K = V S Uᵀ gives W's factors with roles swapped.
    u, s, vh = jnp.linalg.svd(k32, full_matrices=False)  # K = u diag(s) vh
    idx = slice(0, rank) if largest else slice(min(d_in, d_out) - rank, None)
    root = jnp.sqrt(s[idx] / scale)
    a = (u[:, idx] * root).astype(_STORAGE)  # (d_in, r)  == A_tᵀ
    b = (root[:, None] * vh[idx]).astype(_STORAGE)  # (r, d_out) == B_tᵀ
    low = jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST).astype(jnp.float32)
    residual = (k32 - scale * low).astype(residual_dtype or kernel.dtype)
    return a, b, residual


def _check_residual_dtype(method) -> None:
    value = method.residual_dtype
    if value is None:
        return
    try:
        ok = isinstance(value, str) and jnp.issubdtype(jnp.dtype(value), jnp.floating)
    except TypeError:
        ok = False
    if not ok:
        raise ValueError(
            f"{type(method).__name__}.residual_dtype={value!r} is not allowed: use None (the "
            "kernel's dtype) or a floating dtype name such as 'float32'"
        )


@dataclasses.dataclass(frozen=True)
class _SVDLoRA(Method):
    rank: int = 8
    alpha: float | None = None  # None: alpha = rank (scale 1), as MiLoRA's official code fixes
    dropout: float = 0.0  # on the input, as LoRA's (the MiLoRA recipe uses 0.05)
    # None: the kernel's dtype. "float32" keeps the residual exact under a bf16 base: its
    # rounding is the size of the minor components MiLoRA trains (see `init_error`).
    residual_dtype: str | None = None
    largest = True

    def __post_init__(self):
        _common.check_int(self, "rank")
        if self.alpha is not None:
            _common.check_alpha(self)
        _common.check_dropout(self)
        _check_residual_dtype(self)

    @property
    def scale(self) -> float:
        return (self.rank if self.alpha is None else self.alpha) / self.rank

    def init(self, key, kernel):
        del key  # deterministic: the spectrum decides
        _common.check_rank_fits(self, kernel.shape)
        a, b, residual = svd_split(kernel, self.rank, self.scale, self.largest, self.residual_dtype)
        return {"A": a, "B": b}, residual

    def apply(self, params, x, kernel=None, *, rng=None):
        x = _common.dropout(x, self.dropout, rng)
        return _common.lowrank_apply(params["A"], params["B"], x, self.scale)

    def delta(self, params, kernel=None):
        return _common.lowrank_delta(params["A"], params["B"], self.scale)


@dataclasses.dataclass(frozen=True)
class PiSSA(_SVDLoRA):
    """Principal components trainable, the rest frozen."""

    largest = True


@dataclasses.dataclass(frozen=True)
class MiLoRA(_SVDLoRA):
    """Minor components trainable, the principal part frozen."""

    largest = False


def init_error(kernel, method, *, x=None, key=None, base_dtype=None) -> float:
    """Relative output change of one kernel at init: ||x@K_res + Δy(x) − x@K|| / ||x@K||.

    K_res is the kernel as `method.init` stores it, cast to `base_dtype` when the
    base is cast after adapting (train's `base_dtype`; a method's own
    `residual_dtype` wins, as in `morejax.cast(..., adapters=...)`). Everything
    else is float32 at HIGHEST precision, so the number is the storage rounding
    alone. x: (n, d_in) rows; None draws 64 standard-normal rows from `key`.
    """
    key = jax.random.key(0) if key is None else key
    init_key, x_key = jax.random.split(key)
    d_in = kernel.shape[0]
    if x is None:
        x = jax.random.normal(x_key, (64, d_in), jnp.float32)
    x = jnp.asarray(x, jnp.float32)
    params, stored = method.init(init_key, kernel)
    keep = getattr(method, "residual_dtype", None)
    if keep is None and base_dtype is not None:
        stored = stored.astype(base_dtype)
    with jax.default_matmul_precision("highest"):
        want = x @ kernel.astype(jnp.float32)
        got = x @ stored.astype(jnp.float32) + method.apply(params, x, stored).astype(jnp.float32)
    return float(jnp.linalg.norm(got - want) / jnp.linalg.norm(want))


def to_lora(params, init_params):
    """PEFT's conversion: a trained PiSSA/MiLoRA as a plain rank-2r LoRA over the original kernel.

    ΔK = s(A B − A0 B0) = s·[A | −A0]·[B ; B0]; use it with LoRA(rank=2r, alpha=2α).
    """
    a = jnp.concatenate([params["A"], -init_params["A"]], axis=1)
    b = jnp.concatenate([params["B"], init_params["B"]], axis=0)
    return {"A": a, "B": b}
