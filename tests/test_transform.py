"""The transform: rules, factored == merged, init invariance, gradients, NNX, FLOPs."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import morejax
from morejax import DoRA, Full, Layout, LoRA, MiLoRA, MoRe, PiSSA
from morejax.methods import Method
from tests.tiny_models import NNXMLP, tiny_linen

jax.config.update("jax_default_matmul_precision", "highest")

METHODS = {
    "lora": LoRA(rank=2, alpha=4.0),
    "more": MoRe(nblocks=4, rank=4),
    "pissa": PiSSA(rank=2, alpha=4.0),
    "milora": MiLoRA(rank=2),
    "dora": DoRA(rank=2, alpha=4.0),
    "full": Full(),
}
QKV = r"layers/(query|key|value)/kernel"


def perturb(adapters, seed=0):
    """Random adapter values, so deltas are far from zero (B and R start at zero)."""
    leaves, treedef = jax.tree.flatten(adapters)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    leaves = [x + 0.1 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]
    return jax.tree.unflatten(treedef, leaves)


@pytest.fixture(scope="module")
def linen():
    model, params, ids = tiny_linen()
    layout = morejax.kernel_layout(model, ids)
    return model, params, ids, layout


def test_kernel_layout_reads_scan_and_dense_general(linen):
    _, _, _, layout = linen
    assert layout["layers/query/kernel"] == Layout(stack=1, n_in=1)
    assert layout["layers/out/kernel"] == Layout(stack=1, n_in=2)
    assert layout["layers/up/kernel"] == Layout(stack=1, n_in=1)
    assert layout["head/kernel"] == Layout(stack=0, n_in=1)


@pytest.mark.parametrize("name", list(METHODS))
def test_init_unchanged_and_factored_equals_merged(linen, name):
    model, params, ids, layout = linen
    rules = {QKV: METHODS[name], r"layers/(out|up|down)/kernel": METHODS[name]}
    base, adapters = morejax.adapt(params, rules, jax.random.key(0), layout=layout)
    want = model.apply({"params": params}, ids)
    for merged in (False, True):
        got = morejax.call(model.apply, base, adapters, ids, merged=merged)
        np.testing.assert_allclose(got, want, atol=1e-5, err_msg=f"{name} merged={merged}")
    trained = perturb(adapters)
    factored = jax.jit(lambda b, a: morejax.call(model.apply, b, a, ids))(base, trained)
    merged = morejax.call(model.apply, base, trained, ids, merged=True)
    assert float(jnp.abs(factored - want).max()) > 1e-3  # the adapters do something
    np.testing.assert_allclose(factored, merged, rtol=1e-5, atol=1e-5)


def test_stacked_adapters_have_a_layer_axis(linen):
    _, params, _, layout = linen
    _, adapters = morejax.adapt(params, {QKV: MoRe(4, 4)}, jax.random.key(0), layout=layout)
    a = adapters["layers"]["query"]["kernel"]
    assert a.params["L"].shape == (2, 4, 4, 4) and a.params["R"].shape == (2, 4, 4, 4)
    flat = morejax.paths.flatten(adapters)
    assert "layers/query/kernel/L" in flat
    # distinct layers get distinct init
    assert not np.allclose(a.params["L"][0], a.params["L"][1])


def test_gradients_reach_only_adapters_and_merge_round_trips(linen):
    model, params, ids, layout = linen
    base, adapters = morejax.adapt(
        params, {QKV: LoRA(2, 4.0)}, jax.random.key(0), trainable=[r"head/.*"], layout=layout
    )
    assert "head" not in base and set(adapters["head"]) == {"kernel", "bias"}

    def loss(b, a):
        return jnp.sum(morejax.call(model.apply, b, a, ids) ** 2)

    g_base, g_ad = jax.jit(jax.grad(loss, argnums=(0, 1)))(base, adapters)
    assert all(float(jnp.abs(x).max()) > 0 for x in jax.tree.leaves(g_ad["head"]))
    assert float(jnp.abs(g_ad["layers"]["query"]["kernel"].params["B"]).max()) > 0
    assert jax.tree.structure(g_ad) == jax.tree.structure(adapters)
    trained = perturb(adapters)
    merged = morejax.merge(base, trained)
    assert jax.tree.structure(merged) == jax.tree.structure(params)
    back = morejax.unmerge(merged, trained)
    for x, y in zip(jax.tree.leaves(back), jax.tree.leaves(base)):
        np.testing.assert_allclose(x, y, atol=1e-5)


@dataclasses.dataclass(frozen=True)
class OutputScale(Method):
    """A method the transform has never heard of: Δy = g ⊙ (x @ K), from the layer's output."""

    uses_layer_output = True
    merge_loses = "g and K are not separable"

    def init(self, key, kernel):
        return {"g": jnp.zeros(kernel.shape[1], jnp.float32)}, kernel

    def apply(self, params, x, kernel=None, *, rng=None, xk=None):
        if xk is None:
            raise AssertionError("the factored call must pass the layer's x @ K")
        return (xk * params["g"]).astype(x.dtype)

    def delta(self, params, kernel=None):
        return kernel.astype(jnp.float32) * params["g"]


def test_a_new_method_needs_no_transform_edit(linen):
    """The transform reads what a method declares: the layer output, an unmerge refusal."""
    model, params, ids, layout = linen
    base, adapters = morejax.adapt(params, {QKV: OutputScale()}, jax.random.key(0), layout=layout)
    trained = perturb(adapters)
    factored = morejax.call(model.apply, base, trained, ids)
    merged = morejax.call(model.apply, base, trained, ids, merged=True)
    np.testing.assert_allclose(factored, merged, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="layers/key/kernel: a merged OutputScale kernel does not"):
        morejax.unmerge(morejax.merge(base, trained), trained)


def test_rules_first_match_exclude_and_errors(linen):
    _, params, _, layout = linen
    rules = {r"layers/query/kernel": LoRA(1), r"layers/.*/kernel": MoRe(4, 4)}
    chosen = morejax.plan(params, rules, exclude=[r".*/down/kernel"], layout=layout)
    assert isinstance(chosen["layers/query/kernel"][0], LoRA)
    assert isinstance(chosen["layers/key/kernel"][0], MoRe)
    assert "layers/down/kernel" not in chosen
    with pytest.raises(ValueError, match=r"(?s)matched no kernel.*layers/query/kernel"):
        morejax.adapt(params, {r".*/q_proj/kernel": LoRA(1)}, jax.random.key(0), layout=layout)
    with pytest.raises(ValueError, match="ambiguous"):
        morejax.adapt(params, {QKV: LoRA(1)}, jax.random.key(0))
    linear = morejax.plan(params, {"all-linear": LoRA(1)}, layout=layout)
    assert "head/kernel" not in linear and len(linear) == 6


def test_summary_counts_from_shapes_alone(linen):
    _, params, _, layout = linen
    abstract = jax.eval_shape(lambda: params)
    base, adapters = jax.eval_shape(
        lambda p: morejax.adapt(p, {QKV: MoRe(4, 4)}, jax.random.key(0), layout=layout), abstract
    )
    summary = morejax.summarize(base, adapters)
    # per layer and matrix: r·nb·(p+s) = 4·4·(4+4) = 128; 2 layers × 3 matrices
    assert summary.adapter_params == 2 * 3 * 128
    assert "layers/query/kernel" in summary.table()


def test_adapter_dropout_only_with_rng(linen):
    model, params, ids, layout = linen
    base, adapters = morejax.adapt(
        params, {QKV: MoRe(4, 4, dropout=0.5)}, jax.random.key(0), layout=layout
    )
    trained = perturb(adapters)
    a = morejax.call(model.apply, base, trained, ids)
    b = morejax.call(model.apply, base, trained, ids, rngs={"dropout": jax.random.key(1)})
    c = morejax.call(model.apply, base, trained, ids, merged=True)
    np.testing.assert_allclose(a, c, atol=1e-5)
    assert float(jnp.abs(a - b).max()) > 1e-4


def test_factored_refuses_kernels_no_dense_uses():
    class Odd(nn.Module):
        @nn.compact
        def __call__(self, x):
            k = self.param("kernel", nn.initializers.ones, (4, 4))
            return x @ k

    class Outer(nn.Module):
        @nn.compact
        def __call__(self, x):
            return Odd(name="odd")(x)

    x = jnp.ones((1, 4))
    params = Outer().init(jax.random.key(0), x)["params"]
    base, adapters = morejax.adapt(params, {"odd/kernel": LoRA(1)}, jax.random.key(0))
    with pytest.raises(ValueError, match="merged=True"):
        morejax.call(Outer().apply, base, adapters, x)
    morejax.call(Outer().apply, base, adapters, x, merged=True)


@pytest.mark.parametrize("name", ["lora", "more", "milora", "dora", "full"])
def test_nnx_factored_equals_merged(name):
    model = NNXMLP(nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (3, 12))
    want = model(x)
    graphdef, params, rest, layout = morejax.nnx_split(model)
    assert layout["proj/kernel"] == Layout(0, 1)
    base, adapters = morejax.adapt(
        params, {r"(up|proj)/kernel": METHODS[name]}, jax.random.key(0), layout=layout
    )
    fn = lambda m, x: m(x)
    got = morejax.nnx_call(fn, graphdef, base, adapters, rest, x)
    np.testing.assert_allclose(got, want, atol=1e-5)
    trained = perturb(adapters)
    f = jax.jit(lambda b, a: morejax.nnx_call(fn, graphdef, b, a, rest, x))(base, trained)
    m = morejax.nnx_call(fn, graphdef, base, trained, rest, x, merged=True)
    assert float(jnp.abs(f - want).max()) > 1e-3
    np.testing.assert_allclose(f, m, rtol=1e-5, atol=1e-5)


class Stack(nn.Module):
    """4 layers, 512 wide: the shape the FLOPs claim is about."""

    @nn.compact
    def __call__(self, x):
        for i in range(4):
            x = jnp.tanh(nn.Dense(512, name=f"dense_{i}")(x))
        return x


@pytest.mark.parametrize("method", [MoRe(4, 4), LoRA(16, 16.0)])
def test_factored_step_needs_fewer_flops(method):
    model = Stack()
    x = jnp.ones((1024, 512))
    params = model.init(jax.random.key(0), x)["params"]
    base, adapters = morejax.adapt(params, {r".*/kernel": method}, jax.random.key(0))

    def step_flops(merged):
        def loss(a, b):
            return jnp.mean(morejax.call(model.apply, b, a, x, merged=merged) ** 2)

        step = jax.jit(lambda a, b: jax.tree.map(lambda p, g: p - 0.1 * g, a, jax.grad(loss)(a, b)))
        cost = step.lower(adapters, base).compile().cost_analysis()
        return (cost[0] if isinstance(cost, list) else cost)["flops"]

    factored, merged = step_flops(False), step_flops(True)
    assert merged / factored >= 1.3, (merged, factored)


def test_parameter_tables_list_layers_in_numeric_order():
    params = {f"layers_{i}": {"q": {"kernel": jnp.zeros((4, 4))}} for i in (1, 2, 10)}
    base, adapters = morejax.adapt(params, {".*/kernel": LoRA(rank=2)}, jax.random.key(0))
    rows = [line.split()[0] for line in str(morejax.summarize(base, adapters)).splitlines() if line]
    assert rows[1:4] == ["layers_1/q/kernel", "layers_2/q/kernel", "layers_10/q/kernel"]
