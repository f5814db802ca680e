"""Sweeps that crash, shard and collect: a failed point keeps its error and alone reruns,
`--shard K/N` slices are disjoint and cover the sweep, `--collect` rebuilds the one table
from the point folders. Nothing trains: `run_one` is replaced by a fake."""

import csv
import json
from pathlib import Path

import pytest

from morejax import cli
from morejax.cli import sweep
from morejax.train import config

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke_tiny.py"
# product(steps, seed): 6 points in this order; --vectorize makes 2 groups (one per steps).
POINTS = [f"steps={s},seed={d}" for s in (4, 6) for d in (0, 1, 2)]


@pytest.fixture
def cfg_file(tmp_path) -> str:
    path = tmp_path / "six_points.py"
    path.write_text(
        "from morejax.train import config as C\n"
        f"_base = C.load_module({str(SMOKE)!r})\n"
        "config = _base.config\n"
        "def sweep():\n"
        "    return C.product(steps=[4, 6], seed=[0, 1, 2])\n"
    )
    return str(path)


class FakeRun:
    """Writes results.json as a finished run does; raises for folders named in `fail`."""

    def __init__(self):
        self.calls: list[str] = []
        self.fail: set[str] = set()  # folder-name prefixes, e.g. "steps=4,seed=1-"

    def __call__(self, cfg, workdir: Path, **kw):
        self.calls.append(workdir.name)
        config.write_resolved(cfg, workdir)  # a real run leaves files before crashing
        if any(workdir.name.startswith(f) for f in self.fail):
            raise RuntimeError("boom | at step 3\nloss is NaN")
        steps, seeds = config.get_path(cfg, "steps"), config.get_path(cfg, "vmap_seeds")
        score = lambda seed: steps / 10 + seed / 100  # noqa: E731
        out = {"metric": "score", "wall_s": 0.0, "workdir": str(workdir)}
        if seeds:
            out["final"] = [{"score": score(s)} for s in seeds]
            out["best_members"] = [{"value": score(s), "step": steps} for s in seeds]
        else:
            s = score(config.get_path(cfg, "seed"))
            out.update(final={"score": s}, best=s, best_step=steps)
        (workdir / "results.json").write_text(json.dumps(out))
        return out


@pytest.fixture
def fake(monkeypatch) -> FakeRun:
    run = FakeRun()
    monkeypatch.setattr(sweep, "run_one", run)
    return run


def _rows(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def _argv(cfg_file: str, root: Path, vectorize: bool, *more: str) -> list[str]:
    return ["sweep", cfg_file, "--no-progress", "--workdir", str(root)] + (
        ["--vectorize"] if vectorize else []
    ) + list(more)  # fmt: skip


@pytest.mark.parametrize("vectorize", [False, True], ids=["points", "groups"])
def test_failed_point_keeps_its_error_and_alone_reruns(cfg_file, tmp_path, fake, vectorize):
    root = tmp_path / "sweep"
    fake.fail = {"vmap-steps=4-" if vectorize else "steps=4,seed=1-"}
    failed = POINTS[:3] if vectorize else ["steps=4,seed=1"]
    assert cli.main(_argv(cfg_file, root, vectorize)) == 1  # the sweep went on: exit 1
    assert len(fake.calls) == (2 if vectorize else 6)

    rows = _rows(root / "results.csv")
    assert [r["point"] for r in rows] == POINTS
    for r in rows:
        if r["point"] in failed:
            assert r["status"] == "failed"
            assert r["error"] == "RuntimeError: boom | at step 3 loss is NaN"
        else:
            assert r["status"] == "done" and float(r["best"]) > 0
    md = (root / "results.md").read_text()
    assert "RuntimeError: boom \\| at step 3 loss is NaN" in md  # one table line per point
    assert len(md.splitlines()) == 2 + len(POINTS)
    (bad_dir,) = [d for d in root.iterdir() if d.name.startswith(next(iter(fake.fail)))]
    assert "boom" in json.loads((bad_dir / "failed.json").read_text())["error"]

    # The rerun trains only the failed point (or group); the rest is read back.
    fake.fail, fake.calls = set(), []
    assert cli.main(_argv(cfg_file, root, vectorize)) == 0
    assert fake.calls == [bad_dir.name]
    assert not (bad_dir / "failed.json").exists()
    rows = _rows(root / "results.csv")
    assert [r["status"] for r in rows] == ["done"] * 6


@pytest.mark.parametrize("vectorize", [False, True], ids=["points", "groups"])
def test_shards_cover_every_point_once_and_collect_equals_one_run(
    cfg_file, tmp_path, fake, vectorize, capsys
):
    whole, sharded = tmp_path / "whole", tmp_path / "sharded"
    assert cli.main(_argv(cfg_file, whole, vectorize)) == 0
    whole_calls, fake.calls = fake.calls, []
    whole_rows = _rows(whole / "results.csv")

    tables = []
    for k in (1, 2, 3):
        assert cli.main(_argv(cfg_file, sharded, vectorize, "--shard", f"{k}/3")) == 0
        tables.append([r["point"] for r in _rows(sharded / f"results-shard-{k}-of-3.csv")])
    assert not (sharded / "results.csv").exists()  # shards write only their own tables
    assert sorted(fake.calls) == sorted(whole_calls)  # every program once, none twice
    assert sorted(sum(tables, [])) == sorted(POINTS)
    if vectorize:  # a group is never split: round-robin over the 2 groups
        assert tables == [POINTS[:3], POINTS[3:], []]
    else:  # round-robin over the points in sweep() order
        assert tables == [[POINTS[0], POINTS[3]], [POINTS[1], POINTS[4]], [POINTS[2], POINTS[5]]]

    fake.calls = []
    capsys.readouterr()
    assert cli.main(_argv(cfg_file, sharded, vectorize, "--collect")) == 0
    assert fake.calls == []  # collecting trains nothing
    assert "collected 6 of 6 points" in capsys.readouterr().out
    drop = lambda rows: [{k: v for k, v in r.items() if k != "workdir"} for r in rows]  # noqa: E731
    assert drop(_rows(sharded / "results.csv")) == drop(whole_rows)
    assert [r["status"] for r in whole_rows] == ["done"] * 6


def test_collect_lists_missing_and_failed_points(cfg_file, tmp_path, fake, capsys):
    root = tmp_path / "sweep"
    fake.fail = {"steps=6,seed=0-"}  # in shard 1/3 (points 0 and 3)
    assert cli.main(_argv(cfg_file, root, False, "--shard", "1/3")) == 1
    fake.fail = set()
    assert cli.main(_argv(cfg_file, root, False, "--shard", "3/3")) == 0
    (root / f"steps=4,seed=1-{'x' * 10}").mkdir()  # an unrelated folder changes nothing
    calls = list(fake.calls)
    capsys.readouterr()

    assert cli.main(_argv(cfg_file, root, False, "--collect")) == 1
    out = capsys.readouterr().out
    assert fake.calls == calls
    assert "2 missing: steps=4,seed=1, steps=6,seed=1" in out  # shard 2/3 never ran
    assert "1 failed: steps=6,seed=0" in out
    status = {r["point"]: (r["status"], r["error"]) for r in _rows(root / "results.csv")}
    assert status["steps=4,seed=1"] == ("missing", "")
    assert status["steps=6,seed=0"] == ("failed", "RuntimeError: boom | at step 3 loss is NaN")
    assert status["steps=4,seed=0"][0] == "done" and status["steps=6,seed=2"][0] == "done"

    # Keyed on the resolved config: another --set finds none of these runs, says why, and
    # keeps the table that has more finished points.
    table = (root / "results.csv").read_text(), (root / "results.md").read_text()
    assert cli.main(_argv(cfg_file, root, False, "--collect", "--set", "eval_every=2")) == 1
    out = capsys.readouterr().out
    assert "6 missing" in out and "kept" in out
    assert "3 finished points" in out and "eval_every: 4 -> 2" in out
    assert ((root / "results.csv").read_text(), (root / "results.md").read_text()) == table
    assert sorted(p.name for p in root.glob(".results*")) == []  # no temporary files left


def test_a_sweep_that_finishes_fewer_points_keeps_the_better_table(
    cfg_file, tmp_path, fake, capsys
):
    """A rerun in the same folder with other --set values whose points all fail (or that
    is stopped early) prints its rows but leaves the table of six finished points."""
    root = tmp_path / "sweep"
    assert cli.main(_argv(cfg_file, root, False)) == 0
    table = (root / "results.csv").read_text(), (root / "results.md").read_text()
    fake.fail = {"steps="}
    capsys.readouterr()
    assert cli.main(_argv(cfg_file, root, False, "--set", "eval_every=2")) == 1
    out = capsys.readouterr().out
    assert "0 of 6 points finished; kept" in out and "which hold 6 finished points" in out
    assert ((root / "results.csv").read_text(), (root / "results.md").read_text()) == table


def test_an_empty_shard_prints_no_broken_table(cfg_file, tmp_path, fake, capsys):
    assert cli.main(_argv(cfg_file, tmp_path, True, "--shard", "3/3")) == 0
    out = capsys.readouterr().out
    assert "has no points" in out and "|  |" not in out
    assert (tmp_path / "results-shard-3-of-3.md").read_text() == "(no points)\n"


@pytest.mark.parametrize(
    "shard, says",
    [
        ("0/3", "K must be in 1..N"),
        ("4/3", "K must be in 1..N"),
        ("1/0", "N at least 1"),
        ("-1/3", "K must be in 1..N"),
        ("a/3", "is not K/N"),
        ("2", "is not K/N"),
        ("1/2/3", "is not K/N"),
    ],
)
def test_bad_shard_is_one_clear_error(cfg_file, tmp_path, fake, capsys, shard, says):
    assert cli.main(_argv(cfg_file, tmp_path, False, f"--shard={shard}")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: --shard")
    assert says in err
    assert fake.calls == [] and not list(tmp_path.glob("results*"))


def test_shard_and_collect_together_is_an_error(cfg_file, tmp_path, fake, capsys):
    argv = _argv(cfg_file, tmp_path, False, "--shard", "1/2", "--collect")
    assert cli.main(argv) == 2
    assert "drop --shard" in capsys.readouterr().err
    assert fake.calls == []


def test_tables_show_seconds_and_scores_with_their_own_precision():
    table = sweep.markdown([{"point": "a", "best": 0.853214, "wall_s": 55.11}])
    assert table.splitlines()[-1] == "| a | 0.8532 | 55.1 |"
