"""MoReMinor: MoRe whose blocks start from the minor singular components of the kernel's blocks.

MiLoRA's idea (train the smallest singular directions, freeze the principal part) placed
inside MoRe's Monarch structure. Exploratory: no paper defines it.

Which block of the kernel each adapter channel owns. MoRe's forward (methods/more.py) sends
input chunk ``k`` (rows ``k·p ... k·p+p-1`` of the (d_in, d_out) kernel K, zero-padded past
d_in) through L[k] to mid channels ``f = k·r + q`` (q < r); the mid permutation hands channel
``f`` to output group ``l = f mod nb`` as R's column ``q' = f // nb``; group l writes the
interleaved outputs ``o = t·nb + l`` (t < s, o < d_out). So each mid channel joins exactly one
input chunk to one output group, and

    ΔK[chunk k, group l] = Σ_{f ∈ F(k,l)} L[k, f mod r, :]ᵀ ⊗ R[l, :, f // nb],
    F(k,l) = {f : f // r = k and f mod nb = l}        (|F(k,l)| = r / nb when nb divides r).

The "corresponding block" of K is K_kl = K[k·p : k·p+p_k, l::nb] (the rows of chunk k, the
columns of group l in the order t, its real size p_k × s_l without padding). MoReMinor takes
K_kl's n = |F(k,l)| smallest singular triplets (σ, u, v) of a float32 thin SVD and stores
L[k, q, :p_k] = √σ·u and R[l, :s_l, q'] = √σ·v for the channels of F(k,l); padded entries are
0, as are blocks with no channel. Then the frozen kernel becomes K − ΔK0, with ΔK0 computed
from the stored factors at HIGHEST precision (the residual is exact for the numbers kept, as
in svd.py), so the model's output is unchanged at init. ΔK0 is the minor Monarch part: per
block, the tail of the spectrum that a Monarch matrix of this shape can hold.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from morejax.methods.more import MoRe, block_shapes
from morejax.methods.svd import _check_residual_dtype


def block_channels(d_in: int, d_out: int, nblocks: int, rank: int, block_out: str = "current"):
    """Static layout: per (chunk k, group l) its real size (p_k, s_l) and mid channels F(k,l).

    Returns {(k, l): (p_k, s_l, [f, ...])} for every pair with at least one channel.
    """
    nb, p, s = block_shapes(d_in, d_out, nblocks, block_out)
    out = {}
    for f in range(nb * rank):
        k, l = f // rank, f % nb
        p_k = min(p, d_in - k * p)
        s_l = len(range(l, min(s * nb, d_out), nb))
        out.setdefault((k, l), (p_k, s_l, []))[2].append(f)
    return out


@dataclasses.dataclass(frozen=True)
class MoReMinor(MoRe):
    """MoRe (same L, R, forward, dropout, counts) initialised from each block's minor part."""

    residual_dtype: str | None = None  # as MiLoRA's: "float32" keeps a bf16 base exact

    def __post_init__(self):
        super().__post_init__()
        _check_residual_dtype(self)

    def init(self, key, kernel):
        del key  # deterministic: the blocks' spectra decide
        self._check_fits(kernel.shape)
        return _minor_init(self, kernel)

    def _check_fits(self, shape) -> None:
        d_in, d_out = shape
        if self.nblocks > d_in:
            raise ValueError(
                f"MoReMinor.nblocks={self.nblocks} does not fit a {tuple(shape)} kernel: "
                f"nblocks must be in [1, {d_in}] (d_in); lower nblocks or leave this kernel out"
            )
        layout = block_channels(d_in, d_out, self.nblocks, self.rank, self.block_out)
        for (k, l), (p_k, s_l, fs) in layout.items():
            if len(fs) > min(p_k, s_l):
                raise ValueError(
                    f"MoReMinor(nblocks={self.nblocks}, rank={self.rank}) does not fit a "
                    f"{tuple(shape)} kernel: block (chunk {k}, group {l}) is {p_k}x{s_l} "
                    f"but must hold {len(fs)} singular components; lower rank (at most "
                    f"nblocks·min(block size) = {self.nblocks * min(p_k, s_l)}) or nblocks"
                )


@functools.partial(jax.jit, static_argnums=0)
def _minor_init(method: MoReMinor, kernel):
    """The SVDs and scatters of `MoReMinor.init`, compiled once per (method, shape): eager
    dispatch of these many small ops costs seconds per shape."""
    d_in, d_out = kernel.shape
    nb, p, s = block_shapes(d_in, d_out, method.nblocks, method.block_out)
    rank = method.rank
    layout = block_channels(d_in, d_out, method.nblocks, rank, method.block_out)
    k32 = kernel.astype(jnp.float32)
    # Blocks of the same real size share one batched SVD (at most 4 sizes: edge chunks).
    groups: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for kl, (p_k, s_l, _) in layout.items():
        groups.setdefault((p_k, s_l), []).append(kl)
    left = jnp.zeros((nb, rank, p), jnp.float32)
    right = jnp.zeros((nb, s, rank), jnp.float32)
    for (p_k, s_l), pairs in groups.items():
        blocks = jnp.stack(
            [k32[k * p : k * p + p_k, l : l + nb * (s_l - 1) + 1 : nb] for k, l in pairs]
        )
        u, sv, vh = jnp.linalg.svd(blocks, full_matrices=False)  # descending sv
        m = min(p_k, s_l)
        rows = []  # (block, component, k, q, l, q') per channel
        for b, kl in enumerate(pairs):
            fs = layout[kl][2]
            for j, f in enumerate(fs):  # the len(fs) smallest: components m-n ... m-1
                rows.append((b, m - len(fs) + j, f // rank, f % rank, f % nb, f // nb))
        blk, comp, ks, qs, ls, q2s = np.asarray(rows).T
        root = jnp.sqrt(sv[blk, comp])[:, None]
        left = left.at[ks, qs, :p_k].set(root * u[blk, :, comp])
        right = right.at[ls, :s_l, q2s].set(root * vh[blk, comp, :])
    params = {"L": left, "R": right}
    # The residual from the stored factors at HIGHEST precision: exact for what is kept.
    delta0 = method.delta(params, jax.ShapeDtypeStruct((d_in, d_out), jnp.float32))
    residual = (k32 - delta0).astype(method.residual_dtype or kernel.dtype)
    return params, residual
