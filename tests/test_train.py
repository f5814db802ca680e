"""The training loop: optimizer pieces on toy trees, then end-to-end runs of a tiny model on
real SST-2 rows through the command line (1 and 8 devices, eval, stop and resume)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

import morejax
from morejax import cli
from morejax.cli.train import report, run_one
from morejax.train import config, loop, optim
from morejax.train import step as steps

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "configs" / "smoke_tiny.py")


# ----------------------------------------------------------------------------- optimizer pieces


def _opt(**kw):
    return config.Optimizer(**kw)


def test_schedules_warm_up_then_decay():
    cos = optim.schedule_shape(_opt(schedule="cosine", warmup_ratio=0.1), 100)
    assert float(cos(0)) == 0.0
    assert float(cos(5)) == pytest.approx(0.5)
    assert float(cos(10)) == pytest.approx(1.0)
    assert float(cos(55)) == pytest.approx(0.5, abs=1e-6)
    assert float(cos(100)) == pytest.approx(0.0, abs=1e-6)
    lin = optim.schedule_shape(_opt(schedule="linear", warmup_steps=20), 100)
    assert float(lin(20)) == pytest.approx(1.0)
    assert float(lin(60)) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="schedule"):
        optim.schedule_shape(_opt(schedule="poly"), 10)


def test_weight_decay_mask_and_learning_rate_groups():
    params = {
        "head": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)},
        "x": {"kernel": jnp.ones(3)},
    }
    opt = _opt(
        learning_rate=0.1,
        schedule="constant",
        warmup_steps=0,
        weight_decay=0.5,
        clip_norm=None,
        lr_groups={"head/.*": 2.0},
    )
    tx = optim.make_optimizer(opt, 10, params)
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)  # zero gradients: only decay moves
    assert np.allclose(updates["x"]["kernel"], -0.1 * 0.5)
    assert np.allclose(updates["head"]["kernel"], -0.1 * 0.5 * 2.0)
    assert np.allclose(updates["head"]["bias"], 0.0)  # biases are not decayed


class _Tiny(nn.Module):
    @nn.compact
    def __call__(self, ids, mask, types, deterministic=True):
        x = nn.Embed(11, 8)(ids) * mask[..., None]
        x = nn.Dense(8, name="proj")(x).mean(1)
        return nn.Dense(2, name="head")(x)


def _tiny_step(micro_batches: int):
    model = _Tiny()
    ids = jnp.arange(32).reshape(8, 4) % 11
    batch = {
        "input_ids": ids,
        "attention_mask": jnp.ones_like(ids),
        "token_type_ids": jnp.zeros_like(ids),
        "labels": jnp.arange(8) % 2,
        "valid": jnp.ones(8, jnp.int32),
    }
    params = model.init(jax.random.key(0), ids, ids, ids)["params"]
    rules = {"proj/kernel": morejax.MoRe(nblocks=2, rank=2)}
    base, adapters = morejax.adapt(params, rules, jax.random.key(1), trainable=["head/.*"])
    opt = _opt(learning_rate=0.1, warmup_steps=0, weight_decay=0.1, clip_norm=0.05)
    tx = optim.make_optimizer(opt, 10, adapters)
    shape = optim.schedule_shape(opt, 10)
    step = steps.make_member_step(
        steps.make_forward(model, "bert"), "classification", tx, shape, False
    )
    split = jax.tree.map(lambda x: x.reshape(micro_batches, -1, *x.shape[1:]), batch)
    new, _, metrics = jax.jit(step)(adapters, tx.init(adapters), 0, jax.random.key(2), base, split)
    return new, metrics


def test_gradient_accumulation_matches_one_batch():
    one, m1 = _tiny_step(1)
    four, m4 = _tiny_step(4)
    assert float(m1["loss"]) == pytest.approx(float(m4["loss"]), rel=1e-6)
    assert float(m1["grad_norm"]) > 0.05  # clipping is active
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(four)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Workdirs of smoke runs, trained once per module and shared by the tests."""
    root = tmp_path_factory.mktemp("runs")
    done: dict[str, Path] = {}

    def get(name: str, *args: str) -> Path:
        if name not in done:
            workdir = root / name
            argv = ["train", SMOKE, "--workdir", str(workdir), "--no-progress", *args]
            assert cli.main(argv) == 0
            done[name] = workdir
        return done[name]

    return get


def _rows(workdir: Path, split: str) -> list[dict]:
    rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["split"] == split]


def _adapters(workdir: Path, step: int) -> list[np.ndarray]:
    tree = ocp.StandardCheckpointer().restore(workdir / "checkpoints" / str(step) / "adapters")
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [np.asarray(v) for _, v in sorted(flat, key=lambda kv: jax.tree_util.keystr(kv[0]))]


def test_train_end_to_end(shared_data, runs, capsys):
    workdir = runs("one")
    out = capsys.readouterr().out
    assert "resolved config:" in out and "adapter.rank = 4" in out
    assert f"data folder: {config.build(config.load(SMOKE)).data.local_dir}\n" in out
    assert re.search(r"^step 8/8: loss \d+\.\d{4}, \d+ tokens/s$", out, re.M)  # --no-progress
    assert "adapter checkpoint:" in out
    results = json.loads((workdir / "results.json").read_text())
    assert results["finished"] and results["step"] == 8
    # (That it learns is tests/test_glue_tasks.py::test_it_learns.)
    assert results["final"]["accuracy"] == _rows(workdir, "eval")[-1]["accuracy"]
    assert results["init_error"] == 0.0  # MoRe starts exactly at the base model
    assert [r["step"] for r in _rows(workdir, "train")] == list(range(1, 9))
    assert [r["step"] for r in _rows(workdir, "eval")] == [4, 8]
    assert all(r["tokens_per_s"] > 0 and np.isfinite(r["loss"]) for r in _rows(workdir, "train"))
    assert list((workdir / "tb").glob("events.out.tfevents*"))
    assert "adapter.rank = 4" in (workdir / "config.txt").read_text()
    # The two latest and the best are kept, nothing else; only adapter-sized state is written.
    kept = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert kept == [4, 8] and results["best_step"] in kept
    ckpt_bytes = sum(f.stat().st_size for f in (workdir / "checkpoints").rglob("*") if f.is_file())
    assert ckpt_bytes < 2_000_000  # the tiny model's frozen base alone is ~4 MB of float32
    best = max(_rows(workdir, "eval"), key=lambda r: (r["score"], r["step"]))
    assert results["best"] == pytest.approx(best["score"])


def test_eval_command_restores_the_best_checkpoint(shared_data, runs, capsys):
    workdir = runs("one")
    results = json.loads((workdir / "results.json").read_text())
    capsys.readouterr()
    assert cli.main(["eval", SMOKE, "--workdir", str(workdir)]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed[0]["score"] == pytest.approx(results["best"])


def test_eval_scores_the_run_as_it_was_trained(shared_data, runs, capsys):
    workdir = runs("padded", "--set", "data.pack=False")
    results = json.loads((workdir / "results.json").read_text())
    capsys.readouterr()
    assert cli.main(["eval", "--workdir", str(workdir)]) == 0  # the saved config by default
    out = capsys.readouterr().out.strip().splitlines()
    assert json.loads(out[-1])[0]["score"] == pytest.approx(results["best"])
    best = results["best_step"]
    assert f"scoring sst2 (validation) with the best checkpoint, step {best}" in "\n".join(out)
    # The config file without the run's --set: an error naming the field, not another score.
    assert cli.main(["eval", SMOKE, "--workdir", str(workdir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data.pack: False -> True" in err[0]
    assert cli.main(["eval", "--workdir", str(workdir), "--set", "adapter.rank=8"]) == 2
    assert "adapter.rank: 4 -> 8" in capsys.readouterr().err


def test_eval_of_a_missing_workdir_creates_nothing(tmp_path, capsys):
    missing = tmp_path / "nope"
    assert cli.main(["eval", SMOKE, "--workdir", str(missing)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"no trained run in {missing}" in err[0]
    assert not missing.exists()


def test_a_saved_config_is_rebuilt_exactly():
    for path, sets in [
        (SMOKE, ["data.buckets=(8, 16)"]),
        (
            ROOT / "configs" / "glue_minilm.py",
            ["task=mnli", "adapter=LoRA(rank=8)", "optimizer.lr_groups['head/.*']=2.0"],
        ),
    ]:
        cfg = config.resolve(config.load(path, sets))
        rebuilt = config.from_json(config.to_json(cfg))
        assert config.build(rebuilt) == config.build(cfg)


def test_resume_after_a_stop_is_bit_identical(shared_data, runs):
    full = runs("one")
    stopped = runs("stopped", "--stop-at", "3")
    assert not (stopped / "results.json").exists()
    assert (stopped / "checkpoints" / "3").is_dir()
    assert cli.main(["train", SMOKE, "--workdir", str(stopped), "--no-progress"]) == 0
    for a, b in zip(_adapters(full, 8), _adapters(stopped, 8), strict=True):
        assert a.dtype == np.float32
        np.testing.assert_array_equal(a, b)
    assert [r["loss"] for r in _rows(full, "train")] == [r["loss"] for r in _rows(stopped, "train")]


def test_packed_rows_train_like_padded_ones(shared_data, runs):
    """Packing changes the layout, not the model: same losses and dev scores as padding (the
    smoke config packs, like the main job; here packed in two micro-batches). So does running
    the last (here the only) layer at the classifier's tokens alone."""
    padded = runs("padded", "--set", "data.pack=False")
    packed = runs("packed2", "--set", "micro_batches=2")
    cls_only = runs("cls_only", "--set", "model.overrides['cls_only_last_layer']=True")
    for run in (packed, cls_only):
        np.testing.assert_allclose(
            [r["loss"] for r in _rows(run, "train")],
            [r["loss"] for r in _rows(padded, "train")],
            rtol=2e-5,
        )
        assert [r["score"] for r in _rows(run, "eval")] == [
            r["score"] for r in _rows(padded, "eval")
        ]
        for a, b in zip(_adapters(padded, 8), _adapters(run, 8), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-6)


def test_eight_devices_give_the_same_loss_curve(shared_data, runs, tmp_path):
    """Padded rows on 4 data shards against one device with packed rows."""
    one = runs("one")
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", PYTHONPATH=str(ROOT)
    )
    cmd = [sys.executable, "-m", "morejax.cli", "train", SMOKE, "--workdir", str(tmp_path)]
    cmd += ["--set", "mesh.model=2"]  # 4-way data parallel x the frozen base split in 2
    cmd += ["--set", "data.pack=False"]
    proc = subprocess.run(
        cmd + ["--no-progress"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "devices 8" in proc.stdout and "{'data': 4, 'model': 2}" in proc.stdout
    total, per_device = map(
        float, re.search(r"\(([\d.]+) MiB, ([\d.]+) MiB per", proc.stdout).groups()
    )
    assert per_device < 0.6 * total  # the frozen base is split over the 'model' axis
    loss_1 = [r["loss"] for r in _rows(one, "train")]
    loss_8 = [r["loss"] for r in _rows(tmp_path, "train")]
    np.testing.assert_allclose(loss_8, loss_1, rtol=2e-5)
    assert [r["score"] for r in _rows(tmp_path, "eval")] == [r["score"] for r in _rows(one, "eval")]


def test_a_rerun_loads_its_programs_from_the_cache(shared_data, runs, tmp_path):
    """The CLI's persistent compilation cache: the first run writes the compiled steps, a
    rerun of the same config reads them (writes nothing new) and trains identically."""
    cache = tmp_path / "cache"
    env = dict(os.environ, MOREJAX_COMPILE_CACHE=str(cache), PYTHONPATH=str(ROOT))
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"  # the tiny model compiles fast
    entries = []
    for name in ("first", "second"):
        cmd = [sys.executable, "-m", "morejax.cli", "train", SMOKE, "--no-progress"]
        cmd += ["--workdir", str(tmp_path / name)]
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-3000:]
        entries.append(sorted(p.name for p in cache.iterdir()))
    assert len(entries[0]) >= 2  # at least the train and eval steps
    assert entries[1] == entries[0]
    one = [r["loss"] for r in _rows(runs("one"), "train")]
    assert [r["loss"] for r in _rows(tmp_path / "second", "train")] == one


def test_an_interrupt_mid_step_saves_the_position_of_the_last_finished_step(
    shared_data, runs, tmp_path, monkeypatch
):
    """Ctrl-C after a batch is fetched but before its step finishes: the checkpoint must
    not record a data position one batch ahead, so the resumed run equals an unbroken one."""
    full = runs("one")
    real = loop.compile_train_step
    calls = {"n": 0}

    def interrupting(*args, **kwargs):
        step_fn = real(*args, **kwargs)

        def wrapped(*a):
            calls["n"] += 1
            if calls["n"] == 4:  # the 4th batch has been fetched: stop before its step
                raise KeyboardInterrupt
            return step_fn(*a)

        return wrapped

    monkeypatch.setattr(loop, "compile_train_step", interrupting)
    argv = ["train", SMOKE, "--workdir", str(tmp_path), "--no-progress"]
    with pytest.raises(KeyboardInterrupt):
        cli.main(argv)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == ["3"]
    monkeypatch.setattr(loop, "compile_train_step", real)
    assert cli.main(argv) == 0
    for a, b in zip(_adapters(full, 8), _adapters(tmp_path, 8), strict=True):
        np.testing.assert_array_equal(a, b)


def test_resuming_with_another_config_names_the_change(shared_data, runs, tmp_path, capsys):
    stopped = runs("stopped-for-config", "--stop-at", "3")
    argv = ["train", SMOKE, "--workdir", str(stopped), "--no-progress"]
    before = sorted(p.name for p in (stopped / "checkpoints").iterdir())
    with pytest.raises(ValueError, match=r"optimizer.learning_rate: 0.003 -> 0.01"):
        train_argv = argv + ["--set", "optimizer.learning_rate=1e-2"]
        run_one(config.load(SMOKE, ["optimizer.learning_rate=1e-2"]), stopped, progress=False)
    assert sorted(p.name for p in (stopped / "checkpoints").iterdir()) == before  # untouched
    # Through the command line: one line, exit code 2; with the flag the new rate applies.
    assert cli.main(train_argv) == 2
    assert "--allow-config-change" in capsys.readouterr().err
    # Another rank does not fit the saved adapters: an error even with the flag, naming the
    # leaves and the field, and nothing on disk changes.
    other_rank = argv + ["--set", "adapter.rank=8", "--allow-config-change"]
    assert cli.main(other_rank) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error:") and "adapter.rank" in err and "kernel/L" in err, err
    assert sorted(p.name for p in (stopped / "checkpoints").iterdir()) == before
    assert cli.main(train_argv + ["--allow-config-change"]) == 0
    lrs = [r["lr"] for r in _rows(stopped, "train") if r["step"] > 3]
    schedule = optim.schedule_shape(config.build(config.load(SMOKE)).optimizer, 8)
    np.testing.assert_allclose(lrs, [1e-2 * float(schedule(s - 1)) for s in range(4, 9)], rtol=1e-5)


def test_step_zero_check_measures_the_svd_residual_rounding(shared_data, capsys):
    """MiLoRA on a bf16 base: the residual's rounding is reported (and warned about); kept
    float32 it vanishes; LoRA starts exactly at the base model whatever the dtype."""
    from morejax.train import setup as setup_lib

    def error(adapter: str, base_dtype: str) -> float:
        sets = [f"adapter={adapter}", f"base_dtype='{base_dtype}'", "data.eval_limit=8"]
        exp = config.build(config.load(SMOKE, sets))
        s = setup_lib.setup(exp)
        loop.describe(exp, s)
        return s.init_error

    rounded = error("MiLoRA(rank=4)", "bfloat16")
    assert rounded > loop.INIT_ERROR_WARN  # bf16 rounding of W - AB (2.9e-5 measured here)
    assert "residual_dtype='float32' keeps the residual exact" in capsys.readouterr().out
    exact = error("MiLoRA(rank=4, residual_dtype='float32')", "bfloat16")
    assert exact < 1e-5 and exact < rounded / 100
    assert "do not start at the base model" not in capsys.readouterr().out
    assert error("LoRA(rank=4)", "bfloat16") == 0.0
    assert error("DoRA(rank=4)", "bfloat16") < 1e-6


def test_lm_loss_is_the_shifted_token_nll():
    """logsumexp form == log_softmax of logits[:, :-1] at input_ids[:, 1:], response only."""
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (3, 6, 11)).astype(np.float32)
    ids = rng.integers(0, 11, (3, 6)).astype(np.int32)
    loss_mask = (rng.random((3, 6)) > 0.4).astype(np.int32)
    batch = {"input_ids": ids, "loss_mask": loss_mask, "valid": np.array([1, 1, 0])}
    got_sum, got_n = steps.per_example_loss(jnp.asarray(logits), batch, "lm")
    logp = jax.nn.log_softmax(logits[:, :-1], -1)
    nll = -np.take_along_axis(np.asarray(logp), ids[:, 1:, None], -1)[..., 0]
    mask = loss_mask[:, 1:] * batch["valid"][:, None]
    np.testing.assert_allclose(got_sum, (nll * mask).sum(-1), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got_n, mask.sum(-1))
    half, _ = steps.per_example_loss(jnp.asarray(logits, jnp.bfloat16), batch, "lm")
    np.testing.assert_allclose(half, (nll * mask).sum(-1), rtol=2e-2, atol=5e-2)


# ----------------------------------------------------------------------------- issue 29, item 5


def _run(tmp_path, latest):
    ckpt = SimpleNamespace(latest_step=lambda: latest, step_dir=lambda s: tmp_path / str(s))
    meta = {"best": None, "best_step": None, "best_members": None}
    return SimpleNamespace(step=120, steps=900, checked=0, skip_nonfinite=False, meta=meta,
                           metric="score", leaf_names=["a/kernel/L"], ckpt=ckpt)  # fmt: skip


def test_a_nonfinite_step_before_any_checkpoint_says_so(tmp_path):
    window = [{"finite": np.array(False), "leaf_finite": np.array([False])}]
    with pytest.raises(loop.NonFiniteError) as e:
        loop.check_finite(_run(tmp_path, None), window)
    assert "no checkpoint yet" in str(e.value) and "None" not in str(e.value)


def test_a_stopped_run_reports_its_latest_checkpoint(tmp_path, capsys):
    s = SimpleNamespace(n_members=None, init_error=0.0, seeds=[0], lrs=[1e-3], test_overlap={})
    out = loop.summary(SimpleNamespace(name="x"), s, _run(tmp_path, 120), None, tmp_path, 55.11)
    report(out, tmp_path)
    printed = capsys.readouterr().out
    assert f"adapter checkpoint: {tmp_path / '120'} (latest" in printed
    assert "none yet" not in printed and "wall time 55 s, 120 / 900 steps" in printed


def test_the_default_workdir_is_what_the_help_says():
    train = cli.build_parser()._subparsers._group_actions[0].choices["train"]
    (workdir,) = [a for a in train._actions if a.dest == "workdir"]
    assert "runs/<config file stem>" in workdir.help
    args = train.parse_args([SMOKE])
    assert cli.train.default_workdir(args) == Path("runs") / "smoke_tiny"


def test_the_progress_bar_is_only_for_a_terminal(capsys, monkeypatch):
    assert not loop.on_terminal()  # captured: as in a log file
    tty = SimpleNamespace(isatty=lambda: True)
    monkeypatch.setattr(sys, "stdout", tty)
    monkeypatch.setattr(sys, "stderr", tty)
    assert loop.on_terminal()


def test_a_missing_data_folder_is_said_at_the_start(tmp_path, monkeypatch):
    monkeypatch.delenv("MOREJAX_SHARED_DATA", raising=False)
    monkeypatch.delenv("MOREJAX_GLUE_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    from morejax.cli.train import data_folder

    said = data_folder(config.Data(kind="glue", local_dir=None))
    assert f"none ({tmp_path.parent / 'shared' / 'data' / 'glue'} does not exist)" in said
