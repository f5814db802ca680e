"""Property-based tests (hypothesis) of every method over random shapes, ranks and block counts.

Hand-picked shapes miss the awkward ones: rectangular kernels, d_in not divisible by
nblocks (MoRe's padded and dropped blocks), ranks up to min(d_in, d_out), nblocks up to
d_in. The properties (docs/methods.md): factored == merged, init leaves the output
unchanged, unmerge inverts merge, and the parameter counts and ranks of the formulas.
`derandomize=True` makes CI see the same examples every run; the `@example`s pin the
edge cases so every run covers them whatever the draw.
"""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse
from hypothesis import HealthCheck, example, given, seed, settings
from hypothesis import strategies as st
from scipy.sparse.csgraph import maximum_flow

import morejax
from morejax.methods import DoRA, Full, LoRA, MiLoRA, MoRe, PiSSA
from morejax.paths import flatten

pytestmark = pytest.mark.filterwarnings("ignore:MoRe rank .* < nblocks")

NAMES = ("lora", "more", "dora", "pissa", "milora", "full")
EXACT = ("lora", "more", "dora", "full")  # init is bit-identical: B = 0, R = 0, m / ||K|| = 1
SVD = ("pissa", "milora")  # init moves part of K into (A, B): float32 rounding
SVD_TOL = 1e-5  # relative; measured <= 6e-8 (kernel), 3e-7 (outputs), 4e-7 (spectrum)
MAX_DIM = 8  # small: every new shape compiles each eager op once
# One seed for every test: tests over the same strategy draw the same shapes, so each eager
# op compiles once per shape for the whole file (and parametrized methods share them too).
SEED = 20260


def props(n: int):
    def decorate(test):
        configured = settings(
            max_examples=n,
            deadline=None,  # the first call at a shape compiles
            derandomize=True,
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
        )(test)
        return seed(SEED)(configured)

    return decorate


# ----------------------------------------------------------------------------- strategies


class Case(NamedTuple):
    """One kernel (d_in, d_out) and the knobs of every method."""

    d_in: int
    d_out: int
    rank: int
    nblocks: int
    alpha: float | None  # None: each method's default
    rslora: bool
    block_out: str
    seed: int


@st.composite
def cases(draw, max_dim: int = MAX_DIM) -> Case:
    d_in = draw(st.integers(1, max_dim))
    d_out = draw(st.integers(1, max_dim))
    return Case(
        d_in=d_in,
        d_out=d_out,
        rank=draw(st.integers(1, min(d_in, d_out))),
        nblocks=draw(st.integers(1, d_in)),
        alpha=draw(st.sampled_from([None, 0.5, 3.0, 16.0])),
        rslora=draw(st.booleans()),
        block_out=draw(st.sampled_from(["current", "paper"])),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


def edge_cases(fn):
    """MoRe blocks: 7 with nb 5 gives p 2, a 5th block of pure padding dropped and a 4th holding
    one input; 10 with nb 4 pads the 4th block to one input, so rank 7 < nb·r = 8. Both
    rectangular; then d_out > d_in with nb = r = d_in. (1x1 is hypothesis's first draw.)"""
    for d_in, d_out, rank, nb in [(7, 5, 2, 5), (10, 8, 2, 4), (3, 8, 3, 3)]:
        fn = example(case=Case(d_in, d_out, rank, nb, 3.0, False, "current", 7))(fn)
    return fn


def make(name: str, case: Case, rank: int | None = None, nblocks: int | None = None):
    rank = case.rank if rank is None else rank
    nblocks = case.nblocks if nblocks is None else nblocks
    alpha = {} if case.alpha is None else {"alpha": case.alpha}
    return {
        "lora": lambda: LoRA(rank=rank, rslora=case.rslora, **alpha),
        "more": lambda: MoRe(nblocks=nblocks, rank=rank, block_out=case.block_out),
        "dora": lambda: DoRA(rank=rank, **alpha),
        "pissa": lambda: PiSSA(rank=rank, **alpha),
        "milora": lambda: MiLoRA(rank=rank, **alpha),
        "full": lambda: Full(),
    }[name]()


def f64(a) -> np.ndarray:
    return np.asarray(a, np.float64)


def normal(rng, shape, scale: float = 1.0):
    """float32 noise from numpy: jax.random would compile once per shape."""
    return jnp.asarray((scale * rng.standard_normal(shape)).astype(np.float32))


def perturb(tree, rng, scale: float = 1.0):
    """Move every adapter leaf off its init (B, R start at 0), so deltas are far from zero."""
    return jax.tree.map(lambda a: a + normal(rng, a.shape, scale), tree)


def assert_close(got, want, tol: float, scale) -> None:
    """|got - want| <= tol * scale, where scale is the size of the terms that were summed."""
    got, want = f64(got), f64(want)
    assert got.shape == want.shape
    err = float(np.abs(got - want).max(initial=0.0))
    assert err <= tol * float(np.max(scale)), (err, tol * float(np.max(scale)))


def kernel_and_x(case: Case):
    """(kernel, x, rng for perturbations, init key), all from the drawn seed. x has d_in rows,
    the shape MoRe's delta feeds apply (the identity), so eager ops compile once for both."""
    rng = np.random.default_rng(case.seed)
    kernel = normal(rng, (case.d_in, case.d_out))
    x = normal(rng, (case.d_in, case.d_in))
    return kernel, x, rng, jax.random.key(case.seed)


# ----------------------------------------------------------------------------- formulas


def more_shapes(d_in: int, d_out: int, nb: int, block_out: str):
    """(nb_eff, p, s) written out from docs/methods.md (not imported from morejax)."""
    p = -(-d_in // nb)
    nb_eff = -(-d_in // p)
    s = -(-(p * d_out) // d_in) if block_out == "current" else p * -(-d_out // d_in)
    return nb_eff, p, s


def expected_count(name: str, method, d_in: int, d_out: int) -> int:
    if name in ("lora", "pissa", "milora"):
        return method.rank * (d_in + d_out)
    if name == "dora":
        return method.rank * (d_in + d_out) + d_out
    if name == "more":
        nb_eff, p, s = more_shapes(d_in, d_out, method.nblocks, method.block_out)
        return method.rank * nb_eff * (p + s)
    return d_in * d_out  # full: the kernel itself


def monarch_matrix(left, right, d_in: int, d_out: int) -> np.ndarray:
    """MoRe's ΔK from the matrix form P_out · blockdiag(R) · P_mid · blockdiag(L), built from
    index maps in float64 (independent of MoRe.apply's reshapes)."""
    nb, r, p = left.shape
    s = right.shape[1]
    bl = np.zeros((nb * r, nb * p))
    br = np.zeros((nb * s, nb * r))
    mid = np.zeros((nb * r, nb * r))
    out = np.zeros((nb * s, nb * s))
    for k in range(nb):
        bl[k * r : (k + 1) * r, k * p : (k + 1) * p] = left[k]
        br[k * s : (k + 1) * s, k * r : (k + 1) * r] = right[k]
    for l in range(nb):
        for q in range(r):
            mid[l * r + q, q * nb + l] = 1  # group l, slot q reads flat h index q·nb + l
        for t in range(s):
            out[t * nb + l, l * s + t] = 1  # outputs interleave: index t·nb + l
    w = out @ br @ mid @ bl  # y = W x with the padded x and untruncated y
    return w[:d_out, :d_in].T


def more_generic_rank(d_in: int, d_out: int, nb_eff: int, p: int, s: int, r: int) -> int:
    """The rank of ΔK for generic L, R: the most vertex-disjoint paths input -> mid -> output
    (Cauchy-Binet: distinct mid sets give distinct monomials). A max flow: source -> input
    block k (its real inputs) -> output group l (mid slots k·r+q read by l) -> sink (l's real
    outputs). Padding and truncation can make it smaller than min(nb_eff·r, d_in, d_out)."""
    n = 2 * nb_eff + 2
    cap = np.zeros((n, n), np.int32)
    sink = n - 1
    for k in range(nb_eff):
        cap[0, 1 + k] = min(p, d_in - k * p)
        for q in range(r):
            cap[1 + k, 1 + nb_eff + (k * r + q) % nb_eff] += 1
    for l in range(nb_eff):
        cap[1 + nb_eff + l, sink] = sum(t * nb_eff + l < d_out for t in range(s))
    return maximum_flow(scipy.sparse.csr_matrix(cap), 0, sink).flow_value


def numeric_rank(mat, rtol: float) -> int:
    sv = np.linalg.svd(f64(mat), compute_uv=False)
    return int((sv > rtol * sv.max(initial=0.0)).sum())


# ------------------------------------------------------------------------ 1. factored == merged


@pytest.mark.parametrize("name", NAMES)
@props(6)
@given(case=cases())
@edge_cases
def test_method_factored_equals_merged(name, case):
    """x @ K' + apply(x) == x @ (K' + delta), with the adapters moved off their init."""
    method = make(name, case)
    kernel, x, rng, key = kernel_and_x(case)
    with jax.default_matmul_precision("highest"):
        params, base = method.init(key, kernel)
        params = perturb(params, rng)
        delta = f64(method.delta(params, base))
        dy = f64(method.apply(params, x, base))
    assert delta.shape == kernel.shape and dy.shape == (x.shape[0], case.d_out)
    assert np.abs(delta).max() > 1e-3  # the check is not 0 == 0
    x64, base64 = f64(x), f64(base)
    scale = 1 + np.abs(x64) @ (np.abs(base64) + np.abs(delta))
    assert_close(x64 @ base64 + dy, x64 @ (base64 + delta), 1e-5, scale)


class TwoDense(nn.Module):
    hidden: int
    out: int

    @nn.compact
    def __call__(self, x):
        h = jnp.tanh(nn.Dense(self.hidden, name="up")(x))
        return nn.Dense(self.out, name="down")(h)


class ModelCase(NamedTuple):
    dims: tuple[int, int, int]  # d_in, hidden, d_out: kernels (d_in, hidden), (hidden, d_out)
    ranks: tuple[int, int]
    nblocks: tuple[int, int]
    knobs: Case  # alpha, rslora, block_out, seed


@st.composite
def model_cases(draw) -> ModelCase:
    dims = tuple(draw(st.integers(1, MAX_DIM)) for _ in range(3))
    ranks = tuple(draw(st.integers(1, min(a, b))) for a, b in zip(dims, dims[1:]))
    nblocks = tuple(draw(st.integers(1, d)) for d in dims[:2])
    return ModelCase(dims, ranks, nblocks, draw(cases()))


def model_edge_cases(fn):
    knobs = Case(1, 1, 1, 1, 3.0, False, "current", 5)
    fn = example(case=ModelCase((9, 5, 7), (2, 5), (4, 4), knobs))(fn)  # dropped / padded blocks
    return example(case=ModelCase((2, 7, 1), (2, 1), (2, 7), knobs))(fn)


def adapted_model(name: str, case: ModelCase):
    """(model, params, x, methods, base, adapters, rng): a two-Dense model adapted by `name`."""
    d_in, hidden, d_out = case.dims
    rng = np.random.default_rng(case.knobs.seed)
    params = {
        layer: {"kernel": normal(rng, (a, b), a**-0.5), "bias": normal(rng, (b,), 0.1)}
        for layer, a, b in [("up", d_in, hidden), ("down", hidden, d_out)]
    }
    x = normal(rng, (d_in, d_in))  # d_in rows, as kernel_and_x
    methods = [make(name, case.knobs, r, nb) for r, nb in zip(case.ranks, case.nblocks)]
    rules = {"up/kernel": methods[0], "down/kernel": methods[1]}
    base, adapters = morejax.adapt(params, rules, jax.random.key(case.knobs.seed))
    return TwoDense(hidden, d_out), params, x, methods, base, adapters, rng


@pytest.mark.parametrize("name", NAMES)
@props(3)
@given(case=model_cases())
@model_edge_cases
def test_transform_factored_equals_merged_and_counts(name, case):
    """morejax.call (factored) == model.apply on merged params, for a two-Dense Flax model."""
    with jax.default_matmul_precision("highest"):
        model, params, x, methods, base, adapters, rng = adapted_model(name, case)
        trained = perturb(adapters, rng)
        factored = morejax.call(model.apply, base, trained, x)
        merged = model.apply({"params": morejax.merge(base, trained)}, x)
        before = model.apply({"params": params}, x)
    assert float(jnp.abs(merged - before).max()) > 1e-3  # the adapters do something
    assert_close(factored, merged, 1e-5, 1 + np.abs(merged))
    shapes = list(zip(case.dims, case.dims[1:]))
    want = sum(expected_count(name, m, *shape) for m, shape in zip(methods, shapes))
    assert morejax.count_params(adapters) == want


# ----------------------------------------------------------------------------- 2. init unchanged


@pytest.mark.parametrize("name", EXACT)
@props(6)
@given(case=cases())
@edge_cases
def test_init_is_exactly_the_identity(name, case):
    """B = 0 (LoRA, DoRA), R = 0 (MoRe), m = ||K|| by apply's own arithmetic: Δy and ΔK are
    exactly 0 and K is kept, so x @ K + Δy is x @ K to the bit. Full: K moves to the params."""
    method = make(name, case)
    kernel, x, _, key = kernel_and_x(case)
    with jax.default_matmul_precision("highest"):
        params, base = method.init(key, kernel)
        dy = np.asarray(method.apply(params, x, base))
        delta = np.asarray(method.delta(params, base))
        if name == "full":
            np.testing.assert_array_equal(np.asarray(base), 0.0)
            np.testing.assert_array_equal(delta, np.asarray(kernel))
            np.testing.assert_array_equal(dy, np.asarray(x @ kernel))
            return
    np.testing.assert_array_equal(np.asarray(base), np.asarray(kernel))
    np.testing.assert_array_equal(dy, 0.0)
    np.testing.assert_array_equal(delta, 0.0)


@pytest.mark.parametrize("name", SVD)
@props(6)
@given(case=cases())
@edge_cases
def test_svd_init_splits_the_kernel_at_its_end_of_the_spectrum(name, case):
    """residual + s·A@B == K to float32 rounding, and s·A@B holds K's r largest (PiSSA) or
    smallest (MiLoRA) singular values, the residual the others."""
    method = make(name, case)
    kernel, x, _, key = kernel_and_x(case)
    with jax.default_matmul_precision("highest"):
        params, residual = method.init(key, kernel)
        dy = f64(method.apply(params, x, residual))
    k64, res64, x64 = f64(kernel), f64(residual), f64(x)
    low = method.scale * f64(params["A"]) @ f64(params["B"])
    assert np.linalg.norm(res64 + low - k64) <= SVD_TOL * np.linalg.norm(k64)
    want = x64 @ k64
    assert np.linalg.norm(x64 @ res64 + dy - want) <= SVD_TOL * np.linalg.norm(want)
    sv = np.linalg.svd(k64, compute_uv=False)  # descending
    r = case.rank
    picked, rest = (sv[:r], sv[r:]) if name == "pissa" else (sv[-r:], sv[:-r])
    sv_low = np.linalg.svd(low, compute_uv=False)[:r]
    sv_res = np.linalg.svd(res64, compute_uv=False)[: len(rest)]
    np.testing.assert_allclose(sv_low, picked, rtol=0, atol=SVD_TOL * sv[0])
    np.testing.assert_allclose(sv_res, rest, rtol=0, atol=SVD_TOL * sv[0])


@pytest.mark.parametrize("name", NAMES)
@props(3)
@given(case=model_cases())
@model_edge_cases
def test_transform_init_leaves_the_model_unchanged(name, case):
    """Factored and merged, right after `adapt`: bit-identical, or SVD_TOL for PiSSA/MiLoRA."""
    with jax.default_matmul_precision("highest"):
        model, params, x, _, base, adapters, _ = adapted_model(name, case)
        want = np.asarray(model.apply({"params": params}, x))
        factored = np.asarray(morejax.call(model.apply, base, adapters, x))
        merged = np.asarray(model.apply({"params": morejax.merge(base, adapters)}, x))
    for got in (factored, merged):
        if name in EXACT:
            np.testing.assert_array_equal(got, want)
        else:
            assert np.linalg.norm(got - want) <= SVD_TOL * np.linalg.norm(want)


# ----------------------------------------------------------------------------- 3. unmerge


@pytest.mark.parametrize("name", NAMES)
@props(3)
@given(case=model_cases())
@model_edge_cases
def test_unmerge_inverts_merge(name, case):
    """unmerge(merge(base, adapters), adapters) == base; DoRA refuses (its scale is lost)."""
    with jax.default_matmul_precision("highest"):
        _, _, _, _, base, adapters, rng = adapted_model(name, case)
        trained = perturb(adapters, rng)
        merged = morejax.merge(base, trained)
        if name == "dora":
            with pytest.raises(ValueError, match="(up|down)/kernel: a merged DoRA kernel does not"):
                morejax.unmerge(merged, trained)
            return
        back = morejax.unmerge(merged, trained)
    assert jax.tree.structure(back) == jax.tree.structure(base)
    flat_back, flat_merged = flatten(back), flatten(merged)
    if name == "full":  # the kernel lives in the adapters, merge puts it back
        assert "up/kernel" not in flatten(base) and "up/kernel" in flat_merged
    else:  # merge moved the kernel, so the round trip is not trivially the identity
        assert float(jnp.abs(flat_merged["up/kernel"] - base["up"]["kernel"]).max()) > 1e-2
    for path, want in flatten(base).items():
        scale = 1 + np.abs(f64(flat_merged[path])) + np.abs(f64(want))
        assert_close(flat_back[path], want, 1e-6, scale)


# ----------------------------------------------------------------------------- 4. counts and ranks


@pytest.mark.parametrize("name", NAMES)
@props(40)
@given(case=cases(max_dim=300))
@edge_cases
@example(case=Case(4096, 11008, 4, 4, None, False, "paper", 0))  # LLaMA-7B up_proj
@example(case=Case(4096, 11008, 4, 4, None, False, "current", 0))
def test_param_counts_match_the_formulas(name, case):
    """Shapes only (eval_shape compiles nothing): shapes up to 300 and a paper-scale one."""
    method = make(name, case)
    kernel = jax.ShapeDtypeStruct((case.d_in, case.d_out), jnp.float32)
    params, base = jax.eval_shape(method.init, jax.random.key(0), kernel)
    assert base.shape == kernel.shape
    n = morejax.count_params(params)
    assert n == expected_count(name, method, case.d_in, case.d_out)
    if name == "more":
        nb_eff, p, s = more_shapes(case.d_in, case.d_out, case.nblocks, case.block_out)
        assert params["L"].shape == (nb_eff, case.rank, p)
        assert params["R"].shape == (nb_eff, s, case.rank)
        assert (nb_eff - 1) * p < case.d_in <= nb_eff * p  # no block is all padding
        assert n >= case.rank * (case.d_in + case.d_out)  # at least a rank-r LoRA's budget


@pytest.mark.parametrize("name", ("lora", "more"))
@props(6)
@given(case=cases())
@edge_cases
def test_delta_rank(name, case):
    """rank(ΔK) <= r (LoRA) or nb_eff·r (MoRe), and equals its generic value for random params."""
    method = make(name, case)
    kernel, _, rng, key = kernel_and_x(case)
    with jax.default_matmul_precision("highest"):
        params, _ = method.init(key, kernel)
        params = perturb(params, rng)
        delta = f64(method.delta(params, kernel))
    if name == "lora":
        bound = want_rank = case.rank  # A, B random with r <= min(d_in, d_out)
        exact = method.scale * f64(params["A"]) @ f64(params["B"])
    else:
        nb_eff, p, s = more_shapes(case.d_in, case.d_out, case.nblocks, case.block_out)
        bound = min(nb_eff * case.rank, case.d_in, case.d_out)
        want_rank = more_generic_rank(case.d_in, case.d_out, nb_eff, p, s, case.rank)
        exact = monarch_matrix(f64(params["L"]), f64(params["R"]), case.d_in, case.d_out)
    assert_close(delta, exact, 1e-5, 1 + np.abs(exact).max())
    # float32 rounding puts ~1e-7 relative singular values on top of the exact ones: 1e-5
    # separates them. Random factors can be ill-conditioned (seen: 8e-5), so the equality is
    # checked on the float64 product of the stored factors.
    assert numeric_rank(delta, 1e-5) <= bound
    assert numeric_rank(exact, 1e-10) == want_rank


def test_generic_rank_is_below_nb_r_when_a_block_is_padded():
    """d_in=10, nb=4: p=3, the 4th block holds one real input, so rank 7, not nb·r = 8
    (although nb·r <= min(d_in, d_out)): the nb·r ceiling is not always reached."""
    nb_eff, p, s = more_shapes(10, 8, 4, "current")
    assert (nb_eff, p, s) == (4, 3, 3)
    assert more_generic_rank(10, 8, nb_eff, p, s, 2) == 7
    method = MoRe(nblocks=4, rank=2)
    kernel = jnp.zeros((10, 8))
    with jax.default_matmul_precision("highest"):  # the edge case's compiled shapes
        params, _ = method.init(jax.random.key(0), kernel)
        params = perturb(params, np.random.default_rng(1))
        delta = method.delta(params, kernel)
    exact = monarch_matrix(f64(params["L"]), f64(params["R"]), 10, 8)
    assert numeric_rank(exact, 1e-10) == 7
    assert numeric_rank(delta, 1e-5) == 7
