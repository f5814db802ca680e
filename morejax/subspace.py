"""How far fine-tuning moved each adapted kernel's principal singular subspaces.

A forgetting measure that needs no data: the principal angles between the top-k left
(input-side) and right (output-side) singular subspaces of a pretrained kernel K and of the
fine-tuned merged kernel K + ΔK. PiSSA trains the top components directly and should move
them; MiLoRA and MoReMinor train the minor ones and should leave them nearly in place.

Angles use the sine/cosine pairing of Björck & Golub: arccos alone loses every angle
below ~1e-4 rad to float rounding (cos θ ≈ 1 − θ²/2), which is the range that matters here.
Everything is numpy float64 on the host: analysis, not training.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from morejax import paths
from morejax.transform import Adapter, is_adapter, merge

__all__ = [
    "principal_angles",
    "top_subspaces",
    "subspace_shift",
    "kernel_shifts",
    "summarize_shifts",
]


def _orthonormal(a) -> np.ndarray:
    q, _ = np.linalg.qr(np.asarray(a, np.float64))
    return q


def principal_angles(a, b) -> np.ndarray:
    """Principal angles (radians, ascending) between the column spaces of a and b.

    a: (n, k), b: (n, k') with full column rank (orthonormalised here); returns
    min(k, k') angles in [0, π/2].
    """
    qa, qb = _orthonormal(a), _orthonormal(b)
    if qa.shape[0] != qb.shape[0]:
        raise ValueError(f"subspaces live in different spaces: {qa.shape} vs {qb.shape}")
    if qa.shape[1] > qb.shape[1]:
        qa, qb = qb, qa
    cross = qa.T @ qb  # (k, k'), k <= k'
    cos = np.linalg.svd(cross, compute_uv=False)  # descending
    # sin θ_i are the singular values of the part of qa outside span(qb), ascending.
    sin = np.sort(np.linalg.svd(qa - qb @ cross.T, compute_uv=False))
    return np.arctan2(sin, np.clip(cos, 0.0, 1.0))


def top_subspaces(kernel, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(left (d_in, k), right (d_out, k)): the top-k singular vectors of a (d_in, d_out) kernel.

    In Flax's layout `y = x @ K`, the left space is where inputs are read, the right space
    where outputs are written (PyTorch's W = Kᵀ swaps the names).
    """
    w = np.asarray(kernel, np.float64)
    if w.ndim != 2:
        raise ValueError(f"expected a 2-D kernel, got shape {w.shape}")
    if not 0 < k <= min(w.shape):
        raise ValueError(f"k={k} must be in [1, {min(w.shape)}] for a {w.shape} kernel")
    u, _, vh = np.linalg.svd(w, full_matrices=False)
    return u[:, :k], vh[:k].T


def subspace_shift(before, after, k: int) -> dict[str, float]:
    """Principal angles (degrees) between the top-k subspaces of two kernels, both sides.

    Returns max and mean angle per side, and the relative change ||after − before|| / ||before||.
    """
    lb, rb = top_subspaces(before, k)
    la, ra = top_subspaces(after, k)
    left, right = np.degrees(principal_angles(lb, la)), np.degrees(principal_angles(rb, ra))
    b64, a64 = np.asarray(before, np.float64), np.asarray(after, np.float64)
    return {
        "left_max_deg": float(left.max()),
        "left_mean_deg": float(left.mean()),
        "right_max_deg": float(right.max()),
        "right_mean_deg": float(right.mean()),
        "rel_change": float(np.linalg.norm(a64 - b64) / max(np.linalg.norm(b64), 1e-30)),
    }


def _f32(tree):
    return jax.tree.map(
        lambda x: x.astype(jnp.float32) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree
    )


def kernel_shifts(pretrained, base, adapters, k: int) -> list[dict]:
    """One row per adapted matrix: `subspace_shift(pretrained K, merged K + ΔK, k)`.

    `pretrained` is the params tree before `morejax.adapt`; `(base, adapters)` are what it
    returned after training (base holds PiSSA/MiLoRA/MoReMinor residuals, so the merged
    kernel is compared with the original, not the residual). Stacked (scanned) kernels give
    one row per layer, with `index` set.
    """
    merged = paths.flatten(merge(_f32(base), adapters))
    before = paths.flatten(pretrained)
    rows = []
    for path, a in paths.flatten(adapters, is_leaf=is_adapter).items():
        if not isinstance(a, Adapter):
            continue  # trainable leaves (heads, norms) are not kernels to compare
        if path not in before:
            raise KeyError(f"{path} is adapted but absent from the pretrained params")
        k0, k1 = np.asarray(before[path], np.float32), np.asarray(merged[path], np.float32)
        d_in, d_out = a.layout.matrix_shape(k0.shape)
        stack = k0.shape[: a.layout.stack]
        k0 = k0.reshape(-1, d_in, d_out)
        k1 = k1.reshape(-1, d_in, d_out)
        for i in range(k0.shape[0]):
            row = {"path": path, "index": i if stack else None, "method": type(a.method).__name__}
            row.update(subspace_shift(k0[i], k1[i], min(k, d_in, d_out)))
            rows.append(row)
    return rows


def summarize_shifts(rows, groups: Mapping[str, str] | None = None) -> dict[str, dict]:
    """Means of each shift column over the rows whose path matches each group's regex.

    groups: {label: regex searched in the path}; None groups by the path's second-to-last
    component (the projection name, e.g. q_proj).
    """
    if groups is None:
        labels = sorted({r["path"].split("/")[-2] for r in rows})
        groups = {g: rf"(^|/){re.escape(g)}/" for g in labels}
    cols = ("left_max_deg", "left_mean_deg", "right_max_deg", "right_mean_deg", "rel_change")
    out = {}
    for label, pattern in groups.items():
        chosen = [r for r in rows if re.search(pattern, r["path"])]
        if chosen:
            out[label] = {c: float(np.mean([r[c] for r in chosen])) for c in cols}
            out[label]["matrices"] = len(chosen)
    return out
