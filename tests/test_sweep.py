"""Sweeps: every point runs once (finished ones are skipped), a results table is written,
and the vectorised mode (members vmapped in one program) equals separate runs."""

import csv
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

from morejax import commands

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "configs" / "smoke_tiny.py")


def _adapters(step_dir: Path) -> list[np.ndarray]:
    tree = ocp.StandardCheckpointer().restore(step_dir / "adapters")
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [np.asarray(v) for _, v in sorted(flat, key=lambda kv: jax.tree_util.keystr(kv[0]))]


def test_vectorised_sweep_equals_separate_runs(shared_data, tmp_path, capsys):
    separate, vectorised = tmp_path / "separate", tmp_path / "vectorised"
    argv = ["sweep", SMOKE, "--no-progress", "--set", "steps=6", "--set", "eval_every=3"]
    assert commands.main(argv + ["--workdir", str(separate)]) == 0
    assert commands.main(argv + ["--workdir", str(vectorised), "--vectorize"]) == 0

    names = ["learning_rate=0.001", "learning_rate=0.003"]
    rows = list(csv.DictReader(open(separate / "results.csv")))
    assert [r["point"] for r in rows] == names and all(r["status"] == "done" for r in rows)
    assert "| point |" in (separate / "results.md").read_text()
    vrows = list(csv.DictReader(open(vectorised / "results.csv")))
    assert [r["point"] for r in vrows] == names
    for r, v in zip(rows, vrows):
        assert float(r["best"]) == float(v["best"])
        assert float(r["final"]) == float(v["final"])

    # Members of the vmapped program equal the separate runs; the two members differ.
    members = _adapters(vectorised / "vmap-default" / "checkpoints" / "6")
    runs = [_adapters(separate / n / "checkpoints" / "6") for n in names]
    for i, run in enumerate(runs):
        for m, a in zip(members, run, strict=True):
            np.testing.assert_allclose(m[i], a, rtol=1e-5, atol=1e-6)
    assert not np.allclose(runs[0][0], runs[1][0])

    # A second sweep skips the finished points and rewrites the same table.
    capsys.readouterr()
    assert commands.main(argv + ["--workdir", str(separate)]) == 0
    assert capsys.readouterr().out.count("finished before, skipped") == 2
    assert list(csv.DictReader(open(separate / "results.csv"))) == rows
