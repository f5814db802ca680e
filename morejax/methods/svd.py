"""PiSSA and MiLoRA: LoRA initialised from one end of the kernel's spectrum.

PiSSA takes the r largest singular components, MiLoRA the r smallest; both move
them out of the frozen kernel into (A, B) so the model's output is unchanged.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from morejax.methods import _common

_STORAGE = jnp.float32  # adapters train in float32 whatever the base dtype


def svd_split(kernel, rank: int, scale: float, largest: bool):
    """(A, B, residual kernel) with residual + scale·A@B == kernel.

    A full thin SVD in float32 (randomised SVD would only find the top
    components, useless for MiLoRA). The residual is computed from the factors
    after they are rounded to their storage dtype, at HIGHEST precision, so
    that the identity holds for the numbers actually stored.
    """
    d_in, d_out = kernel.shape
    if not 0 < rank <= min(d_in, d_out):
        raise ValueError(
            f"rank {rank} must be in [1, {min(d_in, d_out)}] for a {kernel.shape} kernel"
        )
    k32 = kernel.astype(jnp.float32)
    # Flax kernel K = Wᵀ, so the SVD of K = V S Uᵀ gives W's factors with roles swapped.
    u, s, vh = jnp.linalg.svd(k32, full_matrices=False)  # K = u diag(s) vh
    idx = slice(0, rank) if largest else slice(min(d_in, d_out) - rank, None)
    root = jnp.sqrt(s[idx] / scale)
    a = (u[:, idx] * root).astype(_STORAGE)  # (d_in, r)  == A_tᵀ
    b = (root[:, None] * vh[idx]).astype(_STORAGE)  # (r, d_out) == B_tᵀ
    low = jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST).astype(jnp.float32)
    residual = (k32 - scale * low).astype(kernel.dtype)
    return a, b, residual


@dataclasses.dataclass(frozen=True)
class _SVDLoRA:
    rank: int = 8
    alpha: float | None = None  # None: alpha = rank (scale 1), as MiLoRA's official code fixes
    largest = True

    @property
    def scale(self) -> float:
        return (self.rank if self.alpha is None else self.alpha) / self.rank

    def init(self, key, kernel):
        del key  # deterministic: the spectrum decides
        a, b, residual = svd_split(kernel, self.rank, self.scale, self.largest)
        return {"A": a, "B": b}, residual

    def apply(self, params, x, kernel=None, *, rng=None):
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


def to_lora(params, init_params):
    """PEFT's conversion: a trained PiSSA/MiLoRA as a plain rank-2r LoRA over the original kernel.

    ΔK = s(A B − A0 B0) = s·[A | −A0]·[B ; B0]; use it with LoRA(rank=2r, alpha=2α).
    """
    a = jnp.concatenate([params["A"], -init_params["A"]], axis=1)
    b = jnp.concatenate([params["B"], init_params["B"]], axis=0)
    return {"A": a, "B": b}
