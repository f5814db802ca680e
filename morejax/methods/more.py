"""MoRe: a Monarch-factored adapter, ΔW = P_out · blockdiag(R) · P_mid · blockdiag(L).

Same parameter budget as a rank-r LoRA, nb·r rank ceiling. Layout and forward
semantics follow the official code so checkpoints convert 1:1 (see
docs/methods.md): zero-padded input blocks, all-padding blocks dropped, the
mid step is a reshape-then-swap (not a transpose), outputs interleaved across
blocks, truncated to d_out, dropout on the output, no scaling.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import jax
import jax.numpy as jnp

from morejax.methods import _common
from morejax.methods.base import Method

BLOCK_OUT = ("current", "paper")


def block_shapes(d_in: int, d_out: int, nblocks: int, block_out: str = "current"):
    """(nb_eff, p, s): input block size p, output block size s, blocks kept."""
    p = math.ceil(d_in / nblocks)
    nb_eff = math.ceil(d_in / p)
    if block_out == "current":  # official code since Dec 2024
        s = math.ceil(p * d_out / d_in)
    elif block_out == "paper":  # paper-time counts (more params on rectangular MLPs)
        s = p * math.ceil(d_out / d_in)
    else:
        raise ValueError(f"block_out must be one of {BLOCK_OUT}, got {block_out!r}")
    return nb_eff, p, s


@dataclasses.dataclass(frozen=True)
class MoRe(Method):
    nblocks: int = 4
    rank: int = 4
    dropout: float = 0.0
    block_out: str = "current"

    def __post_init__(self):
        _common.check_int(self, "nblocks")
        _common.check_int(self, "rank")
        _common.check_dropout(self)
        if self.block_out not in BLOCK_OUT:
            raise ValueError(
                f"{type(self).__name__}.block_out={self.block_out!r} is not allowed: use one of "
                f"{BLOCK_OUT}"
            )
        if self.rank < self.nblocks:
            warnings.warn(
                f"MoRe rank {self.rank} < nblocks {self.nblocks}: output groups do not see every "
                "input chunk (rank 1 is block-diagonal up to a permutation).",
                stacklevel=3,
            )

    def init(self, key, kernel):
        d_in, d_out = kernel.shape
        if self.nblocks > d_in:
            raise ValueError(
                f"MoRe.nblocks={self.nblocks} does not fit a {tuple(kernel.shape)} kernel: "
                f"nblocks must be in [1, {d_in}] (d_in); lower nblocks or leave this kernel out"
            )
        nb_eff, p, s = block_shapes(d_in, d_out, self.nblocks, self.block_out)
        bound = 1.0 / math.sqrt(p)
        left = jax.random.uniform(key, (nb_eff, self.rank, p), jnp.float32, -bound, bound)
        right = jnp.zeros((nb_eff, s, self.rank), jnp.float32)
        return {"L": left, "R": right}, kernel

    def apply(self, params, x, kernel=None, *, rng=None):
        """Δy for x of shape (..., d_in); `kernel` (or anything with .shape) gives d_out."""
        if kernel is None:
            raise ValueError("MoRe.apply needs the kernel (or a shape struct) to know d_out")
        d_in, d_out = kernel.shape
        left, right = params["L"].astype(x.dtype), params["R"].astype(x.dtype)
        nb_eff, rank, p = left.shape
        s = right.shape[1]
        batch = x.shape[:-1]
        x = jnp.pad(x, [(0, 0)] * len(batch) + [(0, nb_eff * p - d_in)])
        x_NxP = x.reshape(*batch, nb_eff, p)
        h_NxR = jnp.einsum("...ki,kqi->...kq", x_NxP, left)
        # Official mid permutation: view the flat (nb·r) vector as (r, nb), then swap.
        h_NxR = h_NxR.reshape(*batch, rank, nb_eff).swapaxes(-1, -2)
        z_NxS = jnp.einsum("...lq,ltq->...lt", h_NxR, right)
        y = z_NxS.swapaxes(-1, -2).reshape(*batch, s * nb_eff)[..., :d_out]
        return _common.dropout(y, self.dropout, rng)

    def delta(self, params, kernel=None):
        d_in = params["L"].shape[0] * params["L"].shape[2] if kernel is None else kernel.shape[0]
        eye = jnp.eye(d_in, dtype=jnp.float32)
        with jax.default_matmul_precision("highest"):
            return self.apply(params, eye, kernel)
