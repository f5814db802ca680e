"""morejax.analysis: MoRe's factors as matrices and the best MoRe / LoRA approximations."""

import jax
import numpy as np
import pytest

import morejax
from morejax import analysis

SHAPES = [(6, 9, 2, 2), (12, 7, 3, 2), (10, 10, 4, 8), (9, 14, 4, 4), (16, 8, 4, 3)]


def random_more(d_in, d_out, nb, r, seed=0):
    method = morejax.MoRe(nblocks=nb, rank=r)
    params, _ = method.init(jax.random.key(seed), np.zeros((d_in, d_out), np.float32))
    rng = np.random.default_rng(seed)
    params["R"] = rng.normal(size=params["R"].shape).astype(np.float32)
    return method, params


@pytest.mark.filterwarnings("ignore:MoRe rank")
@pytest.mark.parametrize("d_in,d_out,nb,r", SHAPES)
def test_matrices_multiply_to_the_delta(d_in, d_out, nb, r):
    method, params = random_more(d_in, d_out, nb, r)
    want = np.asarray(method.delta(params, np.zeros((d_in, d_out))))
    np.testing.assert_allclose(analysis.more_delta(params, d_in, d_out), want, atol=1e-5)
    m = analysis.more_matrices(params, d_in, d_out)
    assert sorted(np.unique(m["P_mid"].sum(0))) == [1.0]  # a permutation


@pytest.mark.filterwarnings("ignore:MoRe rank")
@pytest.mark.parametrize("d_in,d_out,nb,r", SHAPES)
def test_projection_is_exact_on_more_matrices_and_lies_in_the_set(d_in, d_out, nb, r):
    method, params = random_more(d_in, d_out, nb, r, seed=1)
    target = analysis.more_delta(params, d_in, d_out)
    got, approx = analysis.more_project(target, method)
    assert analysis.relative_error(approx, target) < 1e-5
    # The projection's params, run through the method's own forward, give the same matrix.
    via_apply = np.asarray(method.delta(got, np.zeros((d_in, d_out))))
    np.testing.assert_allclose(via_apply, approx, atol=1e-5)


@pytest.mark.filterwarnings("ignore:MoRe rank")
def test_projection_beats_gradient_descent_and_block_ranks_add_up():
    rng = np.random.default_rng(0)
    target = rng.normal(size=(12, 10))
    method = morejax.MoRe(nblocks=3, rank=2)
    _, approx = analysis.more_project(target, method)
    proj = analysis.relative_error(approx, target)
    _, fitted = analysis.more_fit(target, method, steps=300, lr=0.05)
    assert proj <= fitted + 1e-4 and fitted < proj + 0.05, (proj, fitted)
    ranks = analysis.more_block_ranks(12, 10, method)
    assert ranks.sum() == 3 * 2 and (ranks.sum(1) == 2).all()
    nb4 = analysis.more_block_ranks(384, 384, morejax.MoRe(4, 8))
    assert (nb4 == 2).all()  # r = 2 nb: rank 2 in every sub-block


def test_lora_projection_and_counts():
    rng = np.random.default_rng(0)
    target = rng.normal(size=(20, 30))
    errs = [analysis.relative_error(analysis.lora_project(target, r), target) for r in (1, 5, 20)]
    assert errs[0] > errs[1] > errs[2] and errs[2] < 1e-10
    assert analysis.lora_params(384, 384, 8) == analysis.more_params(384, 384, morejax.MoRe(4, 8))
    curves = analysis.error_curves(target, [1, 2], [morejax.MoRe(2, 2), morejax.MoRe(2, 4)])
    assert sorted(curves) == ["lora", "more nb=2"] and len(curves["more nb=2"]) == 2
