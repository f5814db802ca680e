"""Principal angles between pretrained and fine-tuned singular subspaces (morejax.subspace)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import morejax
from morejax import subspace


def rotation_in_planes(n, angles, seed=0):
    """An orthonormal basis a (n, k) and b = a with column i rotated by angles[i] toward a
    direction orthogonal to everything else: the principal angles are exactly `angles`."""
    k = len(angles)
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(n, 2 * k)))
    a, other = q[:, :k], q[:, k:]
    b = a * np.cos(angles) + other * np.sin(angles)
    return a, b


@pytest.mark.parametrize("angles", [[0.3, 0.7, 1.2], [1e-7, 2e-5, 0.01], [np.pi / 2, 0.0, 0.5]])
def test_known_rotation_gives_known_angles(angles):
    a, b = rotation_in_planes(12, np.asarray(angles))
    got = subspace.principal_angles(a, b)
    np.testing.assert_allclose(got, np.sort(angles), rtol=1e-6, atol=1e-12)
    # A change of basis inside either subspace changes nothing.
    mix = np.random.default_rng(1).normal(size=(3, 3))
    np.testing.assert_allclose(subspace.principal_angles(a @ mix, b), got, rtol=1e-6, atol=1e-12)


def test_tiny_angles_survive_where_arccos_would_give_zero():
    a, b = rotation_in_planes(8, np.asarray([3e-9]))
    assert np.arccos(min(1.0, float(np.abs(a.T @ b)[0, 0]))) == 0.0
    np.testing.assert_allclose(subspace.principal_angles(a, b), [3e-9], rtol=1e-5)


def test_subspace_shift_of_a_kernel_rotated_on_one_side():
    rng = np.random.default_rng(0)
    u, _ = np.linalg.qr(rng.normal(size=(10, 10)))
    v, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    s = np.array([9.0, 7.0, 5.0, 1.0, 0.5, 0.1])
    before = (u[:, :6] * s) @ v.T
    theta = 0.2  # rotate the top left vector toward an unused direction (u[:, 8])
    u2 = u.copy()
    u2[:, 0] = np.cos(theta) * u[:, 0] + np.sin(theta) * u[:, 8]
    after = (u2[:, :6] * s) @ v.T
    shift = subspace.subspace_shift(before, after, k=2)
    assert shift["left_max_deg"] == pytest.approx(np.degrees(theta), rel=1e-6)
    assert shift["left_mean_deg"] == pytest.approx(np.degrees(theta) / 2, rel=1e-6)
    assert shift["right_max_deg"] < 1e-6  # the output side did not move
    with pytest.raises(ValueError, match=r"k=7 must be in \[1, 6\]"):
        subspace.subspace_shift(before, after, k=7)


def test_kernel_shifts_per_matrix_and_method():
    """Growing the minor part (MiLoRA) keeps the top subspaces; moving the top part (PiSSA)
    turns them."""
    rng = np.random.default_rng(0)
    u, _ = np.linalg.qr(rng.normal(size=(16, 16)))
    v, _ = np.linalg.qr(rng.normal(size=(12, 12)))
    kernel = jnp.asarray((u[:, :12] * np.linspace(10, 1, 12)) @ v.T, jnp.float32)
    params = {"layers": {"q": {"kernel": jnp.stack([kernel, 2 * kernel])}, "norm": jnp.ones(3)}}
    layout = {"layers/q/kernel": morejax.Layout(stack=1)}
    rows = {}
    for method in (morejax.MiLoRA(rank=2), morejax.PiSSA(rank=2)):
        base, adapters = morejax.adapt(
            params, {r".*/q/kernel": method}, jax.random.key(0), layout=layout
        )
        a = adapters["layers"]["q"]["kernel"]
        if isinstance(method, morejax.MiLoRA):  # 3x the two smallest singular values
            a.params["B"] = 3 * a.params["B"]
        else:
            a.params["B"] = a.params["B"] + jnp.asarray(rng.normal(size=a.params["B"].shape))
        rows[type(method).__name__] = subspace.kernel_shifts(params, base, adapters, k=4)
    assert [(r["path"], r["index"]) for r in rows["MiLoRA"]] == [
        ("layers/q/kernel", 0),
        ("layers/q/kernel", 1),
    ]
    for r in rows["MiLoRA"]:
        assert r["left_max_deg"] < 1e-3 and r["right_max_deg"] < 1e-3 and r["rel_change"] > 0.05
    assert all(r["left_max_deg"] > 1.0 and r["right_max_deg"] > 1.0 for r in rows["PiSSA"])
    summary = subspace.summarize_shifts(rows["PiSSA"])
    assert list(summary) == ["q"] and summary["q"]["matrices"] == 2
    # Untouched adapters (init) give zero angles: the merged kernel is the pretrained one.
    base, adapters = morejax.adapt(
        params, {r".*/q/kernel": morejax.MoReMinor(4, 4)}, jax.random.key(0), layout=layout
    )
    for r in subspace.kernel_shifts(params, base, adapters, k=4):
        assert r["left_max_deg"] < 1e-2 and r["rel_change"] < 1e-6


def test_the_package_exposes_subspace_without_another_import():
    import subprocess
    import sys

    code = "import morejax; print(morejax.subspace.kernel_shifts.__name__)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip() == "kernel_shifts", done.stderr[-2000:]
