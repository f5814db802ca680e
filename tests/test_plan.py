"""`morejax plan`: each method's training step compiles for TPU slices from shapes alone
(libtpu, no TPU), the frozen base is split over `model`, a config that does not fit says so
and names one that does, and the command's output (text and JSON) carries no libtpu noise."""

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

    # 24 GiB of float32 MLP per v5e chip (15.75 GiB): split over two chips it fits.
    huge = "model.overrides={'num_layers': 1, 'hidden_size': 1024, 'num_heads': 2, " + (
        "'num_kv_heads': 2, 'head_dim': 64, 'intermediate_size': 2097152, 'vocab_size': 1024}"
    )
    sets = [huge, "mesh.model=1", "batch_size=4", "data.max_len=16", SMALL[0]]
    argv = ["plan", str(TINY), "--topology", "v5e-4", "--programs", "train", "--search", "2"]
    assert main([*argv, *(x for s in sets for x in ("--set", s))]) == 0
    out = capsys.readouterr().out
    assert "fits: NO (train needs 24." in out
    assert "cheapest setting that fits (estimated): --set mesh.data=2 --set mesh.model=2" in out
    assert "estimated" in out.splitlines()[0]


def test_the_command_prints_json_and_no_libtpu_warnings():
    cmd = [sys.executable, "-m", "morejax.cli", "plan", str(TINY), "--topology", "v4-8"]
    cmd += ["--json", "--programs", "train,eval", *(x for s in SMALL for x in ("--set", s))]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TPU_", "ALLOW_MULTIPLE"))}
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout)
    assert out["topology"] == "v4:2x2x1" and out["chips"] == 4 and out["fits"] is True
    assert [p["name"] for p in out["programs"]] == ["train", "eval"]
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
