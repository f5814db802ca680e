"""MoReMinor: MoRe initialised from the minor singular components of the kernel's blocks."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import morejax
from morejax.methods import MoRe, MoReMinor
from morejax.methods.more import block_shapes
from morejax.methods.more_minor import block_channels
from morejax.methods.svd import init_error

pytestmark = pytest.mark.filterwarnings("ignore:MoRe rank")

jax.config.update("jax_default_matmul_precision", "highest")


def normal(*shape, seed=0):
    """numpy draws: a jax.random draw per new shape compiles, seconds on a busy 2-core CPU."""
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def kernel_of(d_in, d_out, seed=0):
    return normal(d_in, d_out, seed=seed)


def block(k_np, k, l, nb, p, p_k, s_l):
    return k_np[k * p : k * p + p_k, l : l + nb * (s_l - 1) + 1 : nb]


# Wide (MLP up) with nb | r, tall (MLP down) with r not a multiple of nb, padded and dropped
# chunks with r < nb.
SHAPES = [(16, 40, 4, 8), (40, 16, 4, 6), (13, 11, 4, 2)]


@pytest.mark.parametrize("d_in,d_out,nb,r", SHAPES)
def test_init_unchanged_smallest_components_and_factored_equals_merged(d_in, d_out, nb, r):
    kernel = kernel_of(d_in, d_out)
    k_np = np.asarray(kernel, np.float64)
    method = MoReMinor(nblocks=nb, rank=r)
    params, residual = method.init(None, kernel)
    nb_eff, p, s = block_shapes(d_in, d_out, nb)
    assert params["L"].shape == (nb_eff, r, p) and params["R"].shape == (nb_eff, s, r)
    assert float(jnp.abs(params["R"]).max()) > 0  # unlike MoRe, R starts non-zero

    # 1. The output is unchanged at init, factored and merged.
    x = normal(5, d_in, seed=1)
    apply = jax.jit(method.apply)  # one compile per shape instead of op-by-op dispatch
    factored = x @ residual + apply(params, x, kernel)
    delta = jax.jit(method.delta)(params, kernel)
    np.testing.assert_allclose(factored, x @ kernel, atol=1e-5)
    np.testing.assert_allclose(x @ (residual + delta), x @ kernel, atol=1e-5)

    # 2. Each block's part is numpy's tail of that block's spectrum; the residual keeps the rest.
    delta, res = np.asarray(delta, np.float64), np.asarray(residual, np.float64)
    covered = np.zeros((d_in, d_out), bool)
    for (k, l), (p_k, s_l, fs) in block_channels(d_in, d_out, nb, r).items():
        u, sv, vh = np.linalg.svd(block(k_np, k, l, nb, p, p_k, s_l), full_matrices=False)
        n = len(fs)
        minor = (u[:, -n:] * sv[-n:]) @ vh[-n:]
        np.testing.assert_allclose(block(delta, k, l, nb, p, p_k, s_l), minor, atol=1e-5)
        kept = np.linalg.svd(block(res, k, l, nb, p, p_k, s_l), compute_uv=False)
        np.testing.assert_allclose(kept[: len(sv) - n], sv[: len(sv) - n], atol=1e-5)
        block(covered, k, l, nb, p, p_k, s_l)[...] = True
    np.testing.assert_array_equal(delta[~covered], 0.0)  # blocks without a channel stay 0
    assert covered.all() == (r >= nb)  # r·nb channels over nb² blocks

    # 3. Factored == merged away from init, and the forward is MoRe's.
    moved = {n: v + 0.1 * normal(*v.shape, seed=3) for n, v in params.items()}
    dy = apply(moved, x, kernel)
    np.testing.assert_allclose(dy, x @ jax.jit(method.delta)(moved, kernel), atol=1e-5)
    more = jax.jit(MoRe(nblocks=nb, rank=r).apply)
    np.testing.assert_array_equal(dy, more(moved, x, kernel))


def test_residual_dtype_keeps_a_bf16_base_exact():
    kernel = kernel_of(32, 48).astype(jnp.bfloat16)
    rounded = init_error(kernel, MoReMinor(nblocks=4, rank=4))
    kept = MoReMinor(nblocks=4, rank=4, residual_dtype="float32")
    assert kept.init(None, kernel)[1].dtype == jnp.float32
    assert init_error(kernel, kept) < 1e-6 < rounded


def test_through_adapt_call_merge_and_vectorised_stack():
    """Scanned (stacked) kernels go through the transform's vmapped init."""
    params = {"layers": {"q": {"kernel": normal(3, 16, 24)}}}
    rules = {r".*/q/kernel": MoReMinor(nblocks=4, rank=4)}
    layout = {"layers/q/kernel": morejax.Layout(stack=1)}
    base, adapters = morejax.adapt(params, rules, jax.random.key(1), layout=layout)
    merged = morejax.merge(base, adapters)
    np.testing.assert_allclose(
        merged["layers"]["q"]["kernel"], params["layers"]["q"]["kernel"], atol=1e-5
    )
    # Each stacked matrix got its own blocks' minor components.
    one, _ = MoReMinor(nblocks=4, rank=4).init(None, params["layers"]["q"]["kernel"][2])
    np.testing.assert_allclose(
        adapters["layers"]["q"]["kernel"].params["L"][2], one["L"], atol=1e-6
    )


def test_through_morejax_call_on_a_dense_model():
    import flax.linen as nn

    model = nn.Dense(12, use_bias=False)
    params = model.init(jax.random.key(0), jnp.zeros((1, 20)))["params"]
    base, adapters = morejax.adapt(
        params, {"kernel": MoReMinor(nblocks=4, rank=4)}, jax.random.key(1)
    )
    x = normal(3, 20, seed=2)
    want = model.apply({"params": params}, x)
    np.testing.assert_allclose(morejax.call(model.apply, base, adapters, x), want, atol=1e-5)
    np.testing.assert_allclose(
        morejax.call(model.apply, base, adapters, x, merged=True), want, atol=1e-5
    )
    # Trainable count equals MoRe's (and a rank-r LoRA's budget).
    assert morejax.count_params(adapters) == 4 * 4 * (5 + 3)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"nblocks": 0}, r"MoReMinor\.nblocks=0 .*\[1, inf\)"),
        ({"rank": 0}, r"MoReMinor\.rank=0 .*\[1, inf\)"),
        ({"dropout": 1.0}, r"MoReMinor\.dropout=1\.0 .*\[0, 1\)"),
        ({"block_out": "x"}, r"MoReMinor\.block_out='x'"),
        ({"residual_dtype": "int8"}, r"MoReMinor\.residual_dtype='int8' .*'float32'"),
    ],
)
def test_bad_fields_are_rejected_at_construction(kwargs, match):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match=match):
            MoReMinor(**kwargs)


def test_blocks_too_small_for_their_components_are_rejected_at_init():
    with pytest.raises(ValueError, match=r"MoReMinor\.nblocks=9 .*\(6, 10\) kernel.*\[1, 6\]"):
        MoReMinor(nblocks=9, rank=9).init(None, jnp.zeros((6, 10)))
    # 8x8, nb 4: blocks are 2x2 and hold at most 2 components each (rank <= 8).
    with pytest.raises(
        ValueError, match=r"block \(chunk 0, group 0\) is 2x2 .*hold 3 .*at most .* = 8\)"
    ):
        MoReMinor(nblocks=4, rank=12).init(None, kernel_of(8, 8))
    params, _ = MoReMinor(nblocks=4, rank=8).init(None, kernel_of(8, 8))  # the bound is fine
    assert params["L"].shape == (4, 8, 2)


def test_config_helper_and_set_value():
    import fiddle as fdl

    from morejax.train import config

    built = config.parse_value("MoReMinor(nblocks=4, rank=8, residual_dtype='float32')")
    assert fdl.build(built) == MoReMinor(nblocks=4, rank=8, residual_dtype="float32")
