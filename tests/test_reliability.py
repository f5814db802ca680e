"""Reliability under faults (issue 10): runs stopped by SIGKILL / SIGTERM / SIGINT at random
moments resume to bit-identical adapters and optimizer state; non-finite steps stop with a
name or are skipped; evaluation never changes the training trajectory."""

import json
import random
import signal

import numpy as np
import pytest

from experiments import reliability as R
from morejax import cli
from morejax.train import loop

# One xdist worker runs this file; session scope keeps the uninterrupted reference run made
# once even when the worker runs other files' tests between these.
pytestmark = pytest.mark.xdist_group("reliability")


@pytest.fixture(scope="session")
def reference(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("reference")
    p = R.run(workdir)
    assert p.returncode == 0, p.stderr[-2000:]
    return workdir, R.final_state(workdir)


def test_stopped_runs_resume_bit_identically(shared_data, reference, tmp_path):
    """SIGKILL then SIGINT at random steps of one run (each restart resumes), then a final
    resume: adapters and optimizer state equal an uninterrupted run's. (SIGTERM is the
    reliability script's smoke run; its full run chains all three kinds four times.)"""
    kinds = ["SIGKILL", "SIGINT"]
    rows = R.chain(tmp_path, reference[1], kinds, random.Random(1))
    assert [r["mismatches at the end"] for r in rows] == [0] * 2, rows
    for r in rows:
        if r["fault"] == "SIGKILL":
            assert r["exit code"] == -signal.SIGKILL
        else:  # preempted: the step it stopped after is saved, then the distinct exit code
            assert r["exit code"] == loop.Preempted.exit_code, r
            assert r["resumes from"] == r["last logged step"], r
            assert f"preempted: stopped by {r['fault']}" in r["message"]


def _train(workdir, *sets):
    argv = ["train", R.SMOKE, "--workdir", str(workdir), "--no-progress"]
    for s in (*R.RUN_SETS, *sets):
        argv += ["--set", s]
    return cli.main(argv)


def test_a_nan_step_stops_with_its_name_and_keeps_the_last_good_checkpoint(
    shared_data, tmp_path, capsys
):
    assert _train(tmp_path, "inject_nan_at=5") == 2
    err = capsys.readouterr().err
    assert "step 5: non-finite loss or gradient, first non-finite leaf" in err
    assert "last good checkpoint: step 4" in err
    kept = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert kept == [3, 4]  # the two latest, both before the NaN step
    assert all(np.isfinite(v).all() for v in R.final_state(tmp_path, 4).values())


def test_nan_steps_can_be_skipped_and_are_counted(shared_data, tmp_path):
    assert _train(tmp_path, "inject_nan_at=5", "nonfinite='skip'") == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["skipped_steps"] == 1
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped"] for r in rows if r["split"] == "train"][4] == 1
    final = R.final_state(tmp_path)
    assert all(np.isfinite(v).all() for v in final.values())
    # The skipped step changed nothing, not even the optimizer's step counts.
    counts = [int(v) for k, v in final.items() if k.endswith("['count']")]
    assert counts and all(c == R.STEPS - 1 for c in counts)


def test_evaluation_never_changes_the_training_trajectory(shared_data, reference, tmp_path):
    assert _train(tmp_path, "eval_every=3") == 0
    assert R.mismatches(reference[1], R.final_state(tmp_path)) == []
