"""DoRA: W' = m · (W + sBA) / ||W + sBA||_row, the norm detached in the backward pass.

Needs the whole kernel (for the norm), so `apply` and `delta` take it.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from morejax.methods import _common
from morejax.methods.base import Method


def _column_norm(kernel, a, b, scale):
    """||K + s·A@B|| per output column without forming A@B (cost d_in·d_out·r, like K@... once)."""
    hi = jax.lax.Precision.HIGHEST
    k = kernel.astype(jnp.float32)
    kk = jnp.sum(k * k, axis=0)
    ka = jnp.matmul(k.T, a, precision=hi)  # (d_out, r)
    cross = jnp.sum(ka * b.T, axis=1)
    gram = jnp.matmul(a.T, a, precision=hi)  # (r, r)
    bb = jnp.sum(b * jnp.matmul(gram, b, precision=hi), axis=0)
    sq = kk + 2 * scale * cross + scale**2 * bb
    return jax.lax.stop_gradient(jnp.sqrt(jnp.maximum(sq, 0.0)))


@dataclasses.dataclass(frozen=True)
class DoRA(Method):
    uses_layer_output = True
    merge_loses = "the column scale is lost"

    rank: int = 8
    alpha: float = 8.0
    dropout: float = 0.0

    def __post_init__(self):
        _common.check_lowrank(self)

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def init(self, key, kernel):
        params = _common.lowrank_init(self, key, kernel)
        # ||K|| by the same arithmetic apply uses, so m / norm is 1 to the last bit at init.
        magnitude = _column_norm(kernel, params["A"], params["B"], self.scale)
        return {**params, "m": magnitude}, kernel

    def apply(self, params, x, kernel=None, *, rng=None, xk=None):
        """`xk`: x @ kernel when the caller has it already (the layer's own product), so the
        factored form costs no second pass over the frozen kernel."""
        if kernel is None:
            raise ValueError("DoRA.apply needs the kernel: its column norms set the scale")
        a, b, m = params["A"], params["B"], params["m"]
        # m / norm stays near 1, where bf16's spacing is 2^-8: rounded there, small magnitude
        # updates snap back to exactly 1. So the ratio and the sum stay float32; only Δy is cast.
        f32 = jnp.float32
        ratio = m.astype(f32) / _column_norm(kernel, a, b, self.scale)
        if xk is None:
            xk = jnp.matmul(x, kernel.astype(x.dtype), preferred_element_type=f32)
        base_y = xk.astype(f32)
        lora_y = _common.lowrank_apply(a, b, _common.dropout(x, self.dropout, rng), self.scale)
        return ((ratio - 1) * base_y + ratio * lora_y.astype(f32)).astype(x.dtype)

    def delta(self, params, kernel=None):
        if kernel is None:
            raise ValueError("DoRA.delta needs the kernel")
        a, b, m = params["A"], params["B"], params["m"]
        k = kernel.astype(jnp.float32)
        merged = k + _common.lowrank_delta(a, b, self.scale)
        return m / _column_norm(kernel, a, b, self.scale) * merged - k
