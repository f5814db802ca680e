"""What an adapter's structure can express: MoRe's factors as matrices, and the best MoRe /
LoRA approximations of a given matrix at a parameter budget.

MoRe's ΔK (Flax layout, `(d_in, d_out)`) splits into sub-blocks: rows of input chunk `k`
(`k·p ... k·p + p - 1`) times columns of output group `l` (`t·nb + l`). The mid permutation
pairs every block-rank channel `q'` of group `l` with exactly one row `q` of `L[k]`, so each
sub-block is a product of its own, disjoint factors and has rank at most `n[l, k]` (the number
of channels routed from chunk `k` to group `l`; `r / nb` each when `nb` divides `r`). The best
Frobenius approximation is therefore a truncated SVD per sub-block (`more_project`), exact for
every shape; `more_fit` reaches the same set by gradient steps and serves as a check.
"""

from __future__ import annotations

import numpy as np

from morejax.methods.more import MoRe, block_shapes


def more_routing(nb: int, r: int) -> np.ndarray:
    """(nb, r, 2) int array: for output group `l` and channel `q'`, the (chunk k, row q) of
    `L` it reads, from the official mid step (view the flat (k, q) vector as (r, nb), swap)."""
    out = np.zeros((nb, r, 2), np.int64)
    for l in range(nb):
        for qp in range(r):
            out[l, qp] = divmod(qp * nb + l, r)
    return out


def more_block_ranks(d_in: int, d_out: int, method: MoRe) -> np.ndarray:
    """(nb_eff, nb_eff) ranks allowed per (output group l, input chunk k) sub-block."""
    nb, _, _ = block_shapes(d_in, d_out, method.nblocks, method.block_out)
    ranks = np.zeros((nb, nb), np.int64)
    for l, row in enumerate(more_routing(nb, method.rank)):
        for k, _ in row:
            ranks[l, k] += 1
    return ranks


def _rows_cols(d_in: int, d_out: int, nb: int, p: int, s: int, l: int, k: int):
    rows = np.arange(k * p, min((k + 1) * p, d_in))
    cols = np.arange(s) * nb + l
    return rows, cols[cols < d_out]


def more_matrices(params: dict, d_in: int, d_out: int) -> dict:
    """MoRe's four factors as dense matrices in `y = W x` orientation, W = P_out R P_mid L:
    `L` (nb·r, d_in) block-diagonal, `P_mid` (nb·r, nb·r), `R` (nb·s, nb·r) block-diagonal,
    `P_out` (d_out, nb·s); `W.T` is the kernel delta. For drawing and checking."""
    left, right = np.asarray(params["L"]), np.asarray(params["R"])
    nb, r, p = left.shape
    s = right.shape[1]
    lm = np.zeros((nb * r, nb * p))
    rm = np.zeros((nb * s, nb * r))
    for k in range(nb):
        lm[k * r : (k + 1) * r, k * p : (k + 1) * p] = left[k]
        rm[k * s : (k + 1) * s, k * r : (k + 1) * r] = right[k]
    mid = np.zeros((nb * r, nb * r))
    for l in range(nb):
        for qp in range(r):
            mid[l * r + qp, qp * nb + l] = 1.0
    out = np.zeros((d_out, nb * s))
    for l in range(nb):
        for t in range(s):
            if t * nb + l < d_out:
                out[t * nb + l, l * s + t] = 1.0
    return {"L": lm[:, :d_in], "P_mid": mid, "R": rm, "P_out": out}


def more_project(target, method: MoRe) -> tuple[dict, np.ndarray]:
    """(MoRe params, their ΔK): the closest MoRe matrix to `target` (d_in, d_out) in Frobenius
    norm, by a truncated SVD of each sub-block. Padding rows and columns are free, so only the
    real entries are fitted."""
    w = np.asarray(target, np.float64)
    d_in, d_out = w.shape
    nb, p, s = block_shapes(d_in, d_out, method.nblocks, method.block_out)
    r = method.rank
    left, right = np.zeros((nb, r, p)), np.zeros((nb, s, r))
    routing = more_routing(nb, r)
    for l in range(nb):
        for k in range(nb):
            chans = [qp for qp in range(r) if routing[l, qp, 0] == k]
            rows, cols = _rows_cols(d_in, d_out, nb, p, s, l, k)
            if not chans or not len(rows) or not len(cols):
                continue
            u, sv, vt = np.linalg.svd(w[np.ix_(rows, cols)], full_matrices=False)
            for j, qp in enumerate(chans[: len(sv)]):
                q, root = routing[l, qp, 1], np.sqrt(sv[j])
                left[k, q, rows - k * p] = u[:, j] * root
                right[l, (cols - l) // nb, qp] = vt[j] * root
    params = {"L": left.astype(np.float32), "R": right.astype(np.float32)}
    return params, more_delta(params, d_in, d_out)


def more_delta(params: dict, d_in: int, d_out: int) -> np.ndarray:
    """ΔK (d_in, d_out) of MoRe params in float64 numpy (the same map as `MoRe.delta`)."""
    m = more_matrices({k: np.asarray(v, np.float64) for k, v in params.items()}, d_in, d_out)
    return (m["P_out"] @ m["R"] @ m["P_mid"] @ m["L"]).T


def more_fit(target, method: MoRe, *, steps: int = 300, lr: float = 0.02, seed: int = 0):
    """(MoRe params, relative error) by Adam on ||ΔK - target||² through `MoRe.apply`: the
    structure-agnostic route, a check on `more_project` (it should not do better)."""
    import jax
    import jax.numpy as jnp
    import optax

    w = jnp.asarray(target, jnp.float32)
    params, _ = method.init(jax.random.key(seed), w)
    # R starts at 0 (MoRe's init): a small random R lets both factors move from step 1.
    params["R"] = 0.01 * jax.random.normal(jax.random.key(seed + 1), params["R"].shape)
    opt = optax.adam(lr)
    norm = jnp.sum(w**2)

    def loss(ps):
        return jnp.sum((method.delta(ps, w) - w) ** 2) / norm

    @jax.jit
    def step(ps, st):
        value, grads = jax.value_and_grad(loss)(ps)
        updates, st = opt.update(grads, st)
        return optax.apply_updates(ps, updates), st, value

    state = opt.init(params)
    for _ in range(steps):
        params, state, _ = step(params, state)
    return jax.device_get(params), float(jnp.sqrt(loss(params)))


def lora_project(target, rank: int) -> np.ndarray:
    """The best rank-r approximation (truncated SVD): what a LoRA of rank r can reach."""
    u, s, vt = np.linalg.svd(np.asarray(target, np.float64), full_matrices=False)
    return (u[:, :rank] * s[:rank]) @ vt[:rank]


def relative_error(approx, target) -> float:
    target = np.asarray(target, np.float64)
    return float(np.linalg.norm(np.asarray(approx) - target) / max(np.linalg.norm(target), 1e-30))


def more_params(d_in: int, d_out: int, method: MoRe) -> int:
    nb, p, s = block_shapes(d_in, d_out, method.nblocks, method.block_out)
    return method.rank * nb * (p + s)


def lora_params(d_in: int, d_out: int, rank: int) -> int:
    return rank * (d_in + d_out)


def error_curves(target, lora_ranks, more_methods) -> dict:
    """Relative approximation error against parameter count: {'lora': [(params, err)], 'more
    nb=N': [...]} for the given LoRA ranks and MoRe settings (grouped by nblocks)."""
    d_in, d_out = np.shape(target)
    out = {
        "lora": [
            (lora_params(d_in, d_out, r), relative_error(lora_project(target, r), target))
            for r in lora_ranks
        ]
    }
    for m in more_methods:
        _, approx = more_project(target, m)
        point = (more_params(d_in, d_out, m), relative_error(approx, target))
        out.setdefault(f"more nb={m.nblocks}", []).append(point)
    return out
