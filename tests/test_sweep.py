"""Sweeps: every point runs once (finished ones are skipped), a results table is written,
and the vectorised mode (members vmapped in one program) equals separate runs."""

import csv
import json
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from morejax import cli
from morejax.cli import sweep
from morejax.train import config

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "configs" / "smoke_tiny.py")


def _adapters(step_dir: Path) -> list[np.ndarray]:
    tree = ocp.StandardCheckpointer().restore(step_dir / "adapters")
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [np.asarray(v) for _, v in sorted(flat, key=lambda kv: jax.tree_util.keystr(kv[0]))]


def _run_dir(root: Path, prefix: str) -> Path:
    (path,) = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(prefix + "-")]
    return path


def test_vectorised_sweep_equals_separate_runs(shared_data, tmp_path, capsys):
    """Members differ in seed and learning rate: the seed drives the head, the adapters and
    the data order in both modes, so each member equals its separate run."""
    separate, vectorised = tmp_path / "separate", tmp_path / "vectorised"
    argv = ["sweep", SMOKE, "--no-progress", "--set", "steps=6", "--set", "eval_every=3"]
    assert cli.main(argv + ["--workdir", str(separate)]) == 0
    assert cli.main(argv + ["--workdir", str(vectorised), "--vectorize"]) == 0

    names = ["learning_rate=0.001,seed=0", "learning_rate=0.003,seed=1"]
    rows = list(csv.DictReader(open(separate / "results.csv")))
    assert [r["point"] for r in rows] == names and all(r["status"] == "done" for r in rows)
    assert "| point |" in (separate / "results.md").read_text()
    vrows = list(csv.DictReader(open(vectorised / "results.csv")))
    assert [r["point"] for r in vrows] == names
    for r, v in zip(rows, vrows):
        assert float(r["best"]) == pytest.approx(float(v["best"]), abs=1e-6)
        assert float(r["final"]) == pytest.approx(float(v["final"]), abs=1e-6)

    # Members of the vmapped program equal the separate runs (head and adapters alike).
    members = _adapters(_run_dir(vectorised, "vmap-default") / "checkpoints" / "6")
    runs = [_adapters(_run_dir(separate, n) / "checkpoints" / "6") for n in names]
    for i, run in enumerate(runs):
        for m, a in zip(members, run, strict=True):
            np.testing.assert_allclose(m[i], a, rtol=1e-5, atol=1e-6)
    assert not np.allclose(runs[0][0], runs[1][0])
    # Training losses step by step: the data order follows each member's seed.
    for i, n in enumerate(names):
        alone = [r["loss"] for r in _jsonl(_run_dir(separate, n)) if r["split"] == "train"]
        vec = [r["loss"][i] for r in _jsonl(_run_dir(vectorised, "vmap-default"))
               if r["split"] == "train"]  # fmt: skip
        np.testing.assert_allclose(vec, alone, rtol=1e-5)

    # A second sweep skips the finished points and rewrites the same table.
    capsys.readouterr()
    assert cli.main(argv + ["--workdir", str(separate)]) == 0
    assert capsys.readouterr().out.count("finished before with this exact config, skipped") == 2
    assert list(csv.DictReader(open(separate / "results.csv"))) == rows


def _jsonl(workdir: Path) -> list[dict]:
    return [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_finished_points_are_keyed_on_the_resolved_config(tmp_path, monkeypatch, capsys):
    """Another `--set` is another point: its results are never taken from a stale run."""
    calls = []

    def fake_run(cfg, workdir, **kw):
        calls.append((workdir.name, config.get_path(cfg, "steps")))
        out = {"final": {"score": 0.5}, "best": 0.5, "best_step": 1, "metric": "score",
               "wall_s": 0.0, "workdir": str(workdir)}  # fmt: skip
        workdir.mkdir(parents=True)
        (workdir / "results.json").write_text(json.dumps(out))
        return out

    monkeypatch.setattr(sweep, "run_one", fake_run)
    argv = ["sweep", SMOKE, "--no-progress", "--workdir", str(tmp_path)]
    assert cli.main(argv + ["--set", "steps=6"]) == 0
    assert cli.main(argv + ["--set", "steps=6"]) == 0  # finished: skipped
    assert cli.main(argv + ["--set", "steps=4"]) == 0  # another config: runs again
    assert [steps for _, steps in calls] == [6, 6, 4, 4]
    assert len({name for name, _ in calls}) == 4
