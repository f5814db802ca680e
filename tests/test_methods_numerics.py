"""Low-precision numerics of the methods: bf16 compute (DoRA) and a bf16 base (PiSSA/MiLoRA)."""

import jax
import jax.numpy as jnp
import numpy as np

import morejax
from morejax.methods import DoRA, LoRA, MiLoRA
from morejax.methods.svd import init_error

jax.config.update("jax_default_matmul_precision", "highest")


def dora_bf16_setup():
    kernel = jax.random.normal(jax.random.key(0), (32, 16))  # float32
    method = DoRA(rank=4, alpha=8.0)
    params, _ = method.init(jax.random.key(1), kernel)
    x = jax.random.normal(jax.random.key(2), (8, 32)).astype(jnp.bfloat16)
    base = np.asarray(x.astype(jnp.float32) @ kernel)
    return method, params, kernel, x, base


def test_dora_bf16_is_the_identity_at_init():
    """Guard: float32 ratio arithmetic must not bring in an init error (measured: exactly 0).

    The old bf16 ratio also gave 0 here (a ratio 1 ± 1e-7 rounds to exactly 1); the bf16
    failure is the update below.
    """
    method, params, kernel, x, base = dora_bf16_setup()
    dy = np.asarray(method.apply(params, x, kernel), np.float32)
    assert np.abs(dy).max() <= 1e-6 * np.abs(base).max()


def test_dora_bf16_keeps_a_small_magnitude_update():
    """m·(1+1e-3) must add 1e-3·(x@K). A bf16 ratio rounds 1.001 to 1 (old code: Δy = 0)."""
    method, params, kernel, x, base = dora_bf16_setup()
    params = dict(params, m=params["m"] * (1 + 1e-3))
    dy = np.asarray(method.apply(params, x, kernel), np.float32)
    want = np.asarray(x.astype(jnp.float32) @ method.delta(params, kernel))  # float32 reference
    np.testing.assert_allclose(want, 1e-3 * base, rtol=1e-3, atol=1e-4 * np.abs(base).max())
    rel = np.linalg.norm(dy - want) / np.linalg.norm(want)
    assert rel < 1e-2, rel  # measured 2e-3 (bf16 x@K and the bf16 result); old code: 1.0


def test_dora_bf16_per_column_updates_and_factors_match_float32():
    method, params, kernel, x, base = dora_bf16_setup()
    bump = 1e-3 * jnp.linspace(-2.0, 2.0, 16)
    b = 1e-2 * jax.random.normal(jax.random.key(3), params["B"].shape)
    params = dict(params, m=params["m"] * (1 + bump), B=b)
    dy = np.asarray(method.apply(params, x, kernel), np.float32)
    want = np.asarray(x.astype(jnp.float32) @ method.delta(params, kernel))
    rel = np.linalg.norm(dy - want) / np.linalg.norm(want)
    assert rel < 2e-2, rel


def test_cast_keeps_a_residual_dtype_the_method_asks_for():
    kernel = jax.random.normal(jax.random.key(0), (12, 8))
    params = {
        "a": {"kernel": kernel, "bias": jnp.zeros(8)},
        "b": {"kernel": kernel},
        "steps": jnp.arange(3),
    }
    rules = {"a/kernel": MiLoRA(rank=2, residual_dtype="float32"), "b/kernel": LoRA(rank=2)}
    base, adapters = morejax.adapt(params, rules, jax.random.key(1))
    cast = morejax.cast(base, jnp.bfloat16, adapters=adapters)
    assert cast["a"]["kernel"].dtype == jnp.float32
    assert cast["a"]["bias"].dtype == jnp.bfloat16
    assert cast["b"]["kernel"].dtype == jnp.bfloat16
    assert cast["steps"].dtype == base["steps"].dtype
    assert morejax.cast(base, jnp.bfloat16)["a"]["kernel"].dtype == jnp.bfloat16
    # The kept residual still rebuilds the kernel: x@K_res + Δy == x@K.
    a = adapters["a"]["kernel"]
    x = jax.random.normal(jax.random.key(2), (5, 12))
    got = x @ cast["a"]["kernel"] + a.method.apply(a.params, x)
    np.testing.assert_allclose(got, x @ kernel, rtol=1e-5, atol=1e-5)
    assert init_error(kernel, a.method, base_dtype="bfloat16") < 1e-6
