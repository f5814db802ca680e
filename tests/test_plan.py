"""`morejax plan`: each method's training step compiles for TPU slices from shapes alone
(libtpu, no TPU), the frozen base is split over `model`, a config that does not fit says so
and names one that does, the command's output (text and JSON) carries no libtpu noise; and
every `mesh.sharding` gives the single-device loss and gradients on 8 CPU devices."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from morejax.train import config, plan

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "smoke_tiny_lm.py"
# One decoder layer, q and v adapted: seconds to compile for a TPU.
SMALL = ["targets=.*/(q_proj|v_proj)/kernel", "data.max_len=128"]
METHODS = {
    "LoRA": "LoRA(rank=4, alpha=8.0)",
    "MoRe": "MoRe(nblocks=4, rank=4)",
    "DoRA": "DoRA(rank=4, alpha=8.0)",
    "PiSSA": "PiSSA(rank=4)",
    "MiLoRA": "MiLoRA(rank=4)",
    "MoReMinor": "MoReMinor(nblocks=4, rank=4)",
    "Full": "Full()",
}


def experiment(*sets: str):
    return config.build(config.load(TINY, [*SMALL, *sets]))


@pytest.mark.parametrize("topology", ["v5e:2x2", "v4:2x2x1"])
@pytest.mark.parametrize("method", list(METHODS))
def test_each_method_compiles_its_training_step_for_a_tpu_slice(method, topology):
    exp = experiment(f"adapter={METHODS[method]}", "mesh.model=2")
    p = plan.plan(exp, topology, programs=("train",), search=0)
    (train,) = p.programs
    assert p.chips == 4 and p.mesh == {"data": 2, "model": 2}
    assert train.fits and p.fits and 0 < train.peak_bytes < p.hbm_bytes
    assert train.arguments["adapters"] > 0 and train.flops > 0
    assert p.speed.step_s > 0 and p.speed.chip_hours > 0


def test_the_frozen_base_per_chip_is_its_total_over_the_model_axis():
    p = plan.plan(experiment("mesh.model=4"), "v5e:2x2", programs=("train",), search=0)
    (train,) = p.programs
    total = p.load_bytes  # a float32 base, as loaded
    assert train.arguments["base"] == pytest.approx(total / 4, rel=0.01)  # norms replicated
    # The compiler's own argument bytes: the groups plus at most TPU tile padding.
    listed = sum(train.arguments.values())
    assert listed <= train.argument_bytes <= 1.05 * listed + 2**20


def test_a_config_that_does_not_fit_says_so_and_names_a_setting_that_does(capsys):
    from morejax.cli import main

    # 24 GiB of float32 MLP on each v5e chip (15.75 GiB), replicated: split, it fits.
    huge = "model.overrides={'num_layers': 1, 'hidden_size': 1024, 'num_heads': 2, " + (
        "'num_kv_heads': 2, 'head_dim': 64, 'intermediate_size': 2097152, 'vocab_size': 1024}"
    )
    sets = [huge, "mesh.model=1", "mesh.sharding=largest", "batch_size=4", "data.max_len=16"]
    argv = ["plan", str(TINY), "--topology", "v5e-4", "--programs", "train", "--search", "2"]
    assert main([*argv, *(x for s in [*sets, SMALL[0]] for x in ("--set", s))]) == 0
    out = capsys.readouterr().out
    assert "fits: NO (train needs 24." in out
    assert "tried --set mesh.data=2 --set mesh.model=2: train 12." in out
    assert "cheapest setting that fits (estimated): --set mesh.sharding=fsdp" in out
    assert "estimated" in out.splitlines()[0]


def test_a_program_compiled_before_is_taken_from_the_cache(tmp_path, monkeypatch):
    from morejax.train import plan_programs

    def planned(method, topology="v5e:2x2"):
        exp = experiment(f"adapter={method}", "mesh.model=2")
        (train,) = plan.plan(exp, topology, programs=("train",), search=0, cache=tmp_path).programs
        return train

    pissa = planned("PiSSA(rank=4)")
    assert not pissa.cached and len(list(tmp_path.glob("*.json"))) == 1
    compiled = []
    monkeypatch.setattr(plan_programs, "_compile", lambda *a: compiled.append(a) or 1 / 0)
    milora = planned("MiLoRA(rank=4)")  # the same train step: only the SVD init differs
    assert milora.cached and not compiled
    assert milora.fingerprint == pissa.fingerprint
    assert dataclasses.replace(milora, cached=False) == pissa
    with pytest.raises(ZeroDivisionError):  # another rank, or another slice: compiled
        planned("MiLoRA(rank=8)")
    with pytest.raises(ZeroDivisionError):
        planned("PiSSA(rank=4)", "v4:2x2x1")
    # An entry another version wrote (other fields) is compiled again, not trusted.
    (tmp_path / f"{pissa.fingerprint}.json").write_text('{"name": "train", "old": 1}')
    with pytest.raises(ZeroDivisionError):
        planned("PiSSA(rank=4)")
    assert len(compiled) == 3


def test_the_command_prints_json_and_no_libtpu_warnings():
    cmd = [sys.executable, "-m", "morejax.cli", "plan", str(TINY), "--topology", "v4-8"]
    cmd += ["--json", "--programs", "train", *(x for s in SMALL for x in ("--set", s))]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TPU_", "ALLOW_MULTIPLE"))}
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout)
    assert out["topology"] == "v4:2x2x1" and out["chips"] == 4 and out["fits"] is True
    assert [p["name"] for p in out["programs"]] == ["train"]
    assert out["speed"]["tokens_per_s"] > 0
    noise = [line for line in done.stderr.splitlines() if not line.startswith("compiling ")]
    assert noise == [], noise


def test_topologies_and_slice_names():
    assert plan.parse_topology("v5e-8") == ("v5e", "v5e:2x4")
    assert plan.parse_topology("v4-8") == ("v4", "v4:2x2x1")
    assert plan.parse_topology("v5p-8") == ("v5p", "v5p:2x2x1")
    assert plan.parse_topology("v5litepod-16") == ("v5e", "v5e:4x4")
    assert plan.parse_topology("v6e:2x4") == ("v6e", "v6e:2x4")
    with pytest.raises(ValueError, match="unknown TPU topology 'h100-8'"):
        plan.parse_topology("h100-8")
    assert jax.devices()[0].platform == "cpu"  # compiling for a TPU left this process's devices


SHARDED = r"""
import sys
import jax, jax.numpy as jnp, numpy as np
import fiddle as fdl
import morejax
from morejax.train import config, loop, mesh as M, setup, step
from morejax.train.config import Mesh
from morejax.train.model import load_model

cfg = config.load(sys.argv[1], ["adapter=DoRA(rank=4, alpha=8.0)",
                               "targets=.*/(q_proj|v_proj|down_proj)/kernel"])
config.set_path(cfg, "rules", {".*/self_attn/o_proj/kernel": fdl.Config(morejax.Full)})
exp = config.build(cfg)
loaded = load_model(exp.model)
layout = setup.kernel_layout(loaded.model, loaded.family, loaded.params)
base, (adapters,) = setup.adapt_members(exp, [loaded.params], [0], layout)
# Away from the init (B = 0 gives A no gradient): every factor gets a gradient.
rng = np.random.default_rng(0)
adapters = jax.tree.map(lambda a: a + 0.05 * rng.standard_normal(a.shape, np.float32), adapters)
ids = rng.integers(3, 1024, (1, 8, 32), dtype=np.int32)
batch = dict(input_ids=ids, attention_mask=np.ones_like(ids), loss_mask=np.ones_like(ids),
             valid=np.ones((1, 8), np.int32))
tx, shape = loop.optimizer(exp, 10, adapters)
forward, member_step = loop.member_step_of(exp, "lm", loaded.model, loaded.family, tx, shape)


def loss(adapters, base, batch):
    total, count = step.per_example_loss(forward(adapters, base, batch, None), batch, "lm")
    return jnp.sum(total) / jnp.sum(count)


def run(data, model, sharding, train_too=False):
    mesh = M.make_mesh(Mesh(data=data, model=model), jax.devices()[: data * model])
    state, keys_ = loop.initial_state(exp, tx, adapters, [0], [1e-3], False)
    state = jax.tree.map(jnp.copy, state)  # the train step donates it
    state_sh = M.state_sharding(mesh, state, sharding)
    base_sh = M.base_sharding(mesh, base, sharding)
    rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, "data"))
    state, on_base = jax.device_put(state, state_sh), jax.device_put(base, base_sh)
    grad = jax.jit(jax.value_and_grad(loss), in_shardings=(state_sh["adapters"], base_sh, None))
    out = grad(state["adapters"], on_base, {k: v[0] for k, v in batch.items()})
    if not train_too:
        return out, None
    train = step.compile_train_step(member_step, mesh, state, base, False, sharding)
    return out, train(state, keys_, on_base, jax.device_put(batch, rows))[1]


(want_loss, want), ref = run(1, 1, "largest", True)
for data, model, sharding in [(2, 4, "largest"), (8, 1, "fsdp"), (2, 4, "megatron")]:
    (got_loss, got), metrics = run(data, model, sharding, train_too=sharding == "megatron")
    np.testing.assert_allclose(got_loss, want_loss, rtol=1e-5)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-6)
    if metrics is not None:
        np.testing.assert_allclose(metrics["loss"], ref["loss"], rtol=1e-5)
        np.testing.assert_allclose(metrics["grad_norm"], ref["grad_norm"], rtol=1e-5)
    print(data, model, sharding, "ok")
"""


def test_sharded_steps_give_the_single_device_loss_and_gradients():
    """On 8 simulated CPU devices (a subprocess, so this process keeps its devices)."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    env["JAX_PLATFORMS"] = "cpu"
    cmd = [sys.executable, "-c", SHARDED, str(TINY)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count(" ok") == 3


def test_a_training_process_without_tpu_chips_prints_no_libtpu_errors():
    """With the tpu extra installed on a machine without TPUs, importing morejax keeps libtpu
    from starting (it would print errors about TPU_ACCELERATOR_TYPE, then fall back)."""
    code = "import morejax, jax; print(jax.devices()[0].platform)"
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "cpu" and done.stderr == "", done.stderr[-3000:]
