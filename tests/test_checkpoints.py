"""Checkpoint faults on small train states (no model): a kill mid-save, a damaged newest step,
a checkpoint of other adapters, an unwritable or full folder, a failing save."""

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from morejax.train import checkpoints, config, optim
from morejax.train.checkpoints import CheckpointMismatchError, Checkpoints

ROOT = Path(__file__).resolve().parents[1]


def make_state(rank=4, members=None, targets=("query", "value"), value=0.0, clip=1.0):
    """A train state as loop.start_run builds it: adapters, AdamW state, step."""
    adapters = {
        "encoder": {
            t: {"lora_a": jnp.full((8, rank), value + i), "lora_b": jnp.full((rank, 6), -value)}
            for i, t in enumerate(targets)
        }
    }
    tx = optim.make_optimizer(config.Optimizer(weight_decay=0.01, clip_norm=clip), 10, adapters)
    if members:
        adapters = jax.tree.map(lambda x: jnp.stack([x] * members), adapters)
        opt_state = jax.vmap(tx.init)(adapters)
    else:
        opt_state = tx.init(adapters)
    step = jnp.asarray(int(value), jnp.int32)
    return {"adapters": adapters, "opt_state": opt_state, "step": step}


def run_config(rank=4, members=None, targets=("query", "value"), clip=1.0):
    """The shape-deciding fields of a flat resolved config (as config.to_json writes them)."""
    out = {
        "model.name": "tiny",
        "adapter.__fn__": "morejax.methods.lora.LoRA",
        "adapter.rank": rank,
        "targets": f".*/({'|'.join(targets)})/kernel",
        "optimizer.learning_rate": 1e-3,
        "optimizer.clip_norm": clip,
    }
    out.update({f"vmap_seeds[{i}]": i for i in range(members or 0)} or {"vmap_seeds": []})
    return out


def save(ck, step, score=None, **kw):
    state = make_state(value=float(step), **kw)
    metrics = None if score is None else {"score": score}
    return ck.save(step, state, {"best": score}, {"pos": step}, run_config(**kw), metrics)


def first_leaf(out):
    return float(np.asarray(out["state"]["adapters"]["encoder"]["query"]["lora_a"])[0, 0])


def listing(directory: Path) -> dict:
    """Every file under `directory` with its size and mtime: to show nothing was touched."""
    return {
        str(p.relative_to(directory)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def data_files(step_dir: Path, item="adapters") -> list[Path]:
    """The item's array data: tensorstore's OCDBT data files (`ocdbt.process_0/d/*`)."""
    files = [p for p in (step_dir / item).rglob("*") if p.is_file() and p.parent.name == "d"]
    assert files, f"no data files in {step_dir / item}: {sorted((step_dir / item).rglob('*'))}"
    return files


@pytest.fixture
def two_steps(tmp_path):
    """Step 1 (the best) and step 2 (the latest) of a run."""
    ck = Checkpoints(tmp_path / "checkpoints", keep_latest=1)
    save(ck, 1, score=0.9)
    save(ck, 2, score=0.5)
    save(ck, 3)  # no metrics: step 2 is dropped by the preservation policy
    ck.close()
    directory = tmp_path / "checkpoints"
    assert sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) == [1, 3]
    return directory


def test_roundtrip_keeps_latest_and_best_and_resaving_a_step_is_a_no_op(two_steps):
    ck = Checkpoints(two_steps, keep_latest=1)
    assert ck.all_steps() == [1, 3]
    assert ck.best_step() == 1
    step, out = ck.restore_latest(make_state(), run_config())
    assert step == 3 and first_leaf(out) == 3.0 and int(out["state"]["step"]) == 3
    assert out["data"] == {"pos": 3} and out["config"]["adapter.rank"] == 4
    # A Ctrl-C right after a scheduled save saves the same step again: nothing to do.
    assert save(ck, 3) is False
    assert ck.all_steps() == [1, 3]
    assert not (two_steps / checkpoints.TRASH).exists()
    assert (
        Checkpoints(two_steps.parent / "fresh", keep_latest=1).restore_latest(make_state()) is None
    )


# ------------------------------------------------------------------------- a kill mid-save


def test_partial_step_folders_are_ignored(two_steps):
    """What a kill leaves: a step's temporary folder, and old steps half-way to deletion."""
    partial = two_steps / f"4{checkpoints.TMP_SUFFIX}"
    (partial / "adapters").mkdir(parents=True)
    (partial / "adapters" / "_METADATA").write_text('{"tree_metadata": ')  # cut mid-write
    trash = two_steps / checkpoints.TRASH / "2" / "adapters"
    trash.mkdir(parents=True)
    ck = Checkpoints(two_steps, keep_latest=1)
    assert ck.latest_step() == 3 and ck.all_steps() == [1, 3]
    step, out = ck.restore_latest(make_state(), run_config())
    assert (step, first_leaf(out)) == (3, 3.0)
    save(ck, 4)
    assert ck.all_steps() == [1, 4]
    ck.close()
    assert not partial.exists() and not (two_steps / checkpoints.TRASH).exists()


SAVER = """
import resource, signal, sys, time
from morejax import cli
from morejax.train import checkpoints
from tests import test_checkpoints as t
ck = checkpoints.Checkpoints(sys.argv[1], keep_latest=1)
if sys.argv[2] == "hang":
    t.save(ck, 1, score=0.9)
    t.save(ck, 2)
    from orbax.checkpoint._src.path import atomicity
    async def hang(self, *a, **k):  # every file is written, the rename is next
        print("mid-save", flush=True)
        time.sleep(600)
    atomicity.AtomicRenameTemporaryPath.finalize = hang
    t.save(ck, 3)
elif sys.argv[2] == "loop":
    for step in range(1, 10_000):
        t.save(ck, step, score=step % 3)
        print("saved", step, flush=True)
else:  # files may not grow past 200 bytes: tensorstore's writes fail with EFBIG
    t.save(ck, 1, score=0.9)
    t.save(ck, 2)
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (200, limits[1]))
    try:
        t.save(ck, 3, score=1.0)
    except OSError as e:
        error = e
    resource.setrlimit(resource.RLIMIT_FSIZE, limits)
    print("errno", error.errno, flush=True)
    print(cli.error_line(error), flush=True)
    print("steps", ck.all_steps(), flush=True)
    ck.wait()  # what loop.train does on the way out
    ck.close()
    print("closed", flush=True)
"""


def saver(directory: Path, mode: str, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(SAVER), str(directory), mode],
        cwd=ROOT,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        text=True,
        **kw,
    )


def kill_saver(directory: Path, mode: str, until: str, delay: float = 0.0) -> str:
    proc = saver(directory, mode, stdout=subprocess.PIPE)
    lines = []
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            line = proc.stdout.readline()
            assert line, f"the saver exited early: {lines}"
            lines.append(line.strip())
            if line.strip() == until:
                break
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return lines[-1]


def test_sigkill_in_the_middle_of_a_save_keeps_the_previous_step(tmp_path):
    directory = tmp_path / "checkpoints"
    kill_saver(directory, "hang", "mid-save")
    tmp = checkpoints.TMP_SUFFIX
    assert (directory / f"3{tmp}" / f"adapters{tmp}" / "_METADATA").is_file()  # killed mid-save
    ck = Checkpoints(directory, keep_latest=1)
    assert ck.all_steps() == [1, 2]
    step, out = ck.restore_latest(make_state(), run_config())
    assert (step, first_leaf(out), out["data"]) == (2, 2.0, {"pos": 2})


def test_sigkill_at_any_moment_of_a_save_loop_leaves_a_readable_step(tmp_path):
    directory = tmp_path / "checkpoints"
    kill_saver(directory, "loop", "saved 3", delay=0.02)  # somewhere in saving step 4 or 5
    ck = Checkpoints(directory, keep_latest=1)
    step, out = ck.restore_latest(make_state(), run_config())
    assert step >= 3 and first_leaf(out) == float(step) and out["data"] == {"pos": step}


# ---------------------------------------------------------------- a damaged committed step


@pytest.mark.parametrize("damage", ["truncate", "delete", "meta"])
def test_damaged_newest_step_falls_back_to_the_previous_one(two_steps, damage, capsys):
    if damage == "truncate":
        for f in data_files(two_steps / "3"):
            f.write_bytes(f.read_bytes()[: os.path.getsize(f) // 2])
    elif damage == "delete":
        for f in data_files(two_steps / "3"):
            f.unlink()
    else:
        (two_steps / "3" / "meta" / "metadata").write_text('{"best": ')
    item = "meta" if damage == "meta" else "adapters"
    ck = Checkpoints(two_steps, keep_latest=1)
    step, out = ck.restore_latest(make_state(), run_config())
    assert (step, first_leaf(out), out["data"]) == (1, 1.0, {"pos": 1})
    said = capsys.readouterr().out
    assert f"{two_steps / '3'} ({item}:" in said and "resuming from step 1" in said
    assert said.count("\n") == 1
    # Moved aside, never deleted; the steps saved after the fallback are kept as usual.
    assert (two_steps / f"3{checkpoints.DAMAGED}" / item).is_dir()
    assert ck.all_steps() == [1]
    save(ck, 2)
    save(ck, 3)
    assert ck.all_steps() == [1, 3]
    assert first_leaf(ck.restore(3, make_state())) == 3.0


def test_no_readable_step_is_a_clear_error_and_deletes_nothing(two_steps):
    for step in (1, 3):
        for f in data_files(two_steps / str(step), "optimizer"):
            f.write_bytes(b"")
    before = listing(two_steps)
    with pytest.raises(ValueError, match="no readable checkpoint") as e:
        Checkpoints(two_steps, keep_latest=1).restore_latest(make_state(), run_config())
    message = str(e.value)
    assert str(two_steps) in message and "move" in message and "--workdir" in message
    assert "step 3: optimizer" in message and "step 1: optimizer" in message
    assert not isinstance(e.value, CheckpointMismatchError)
    assert listing(two_steps) == before


# ------------------------------------------------------------------- a checkpoint of others


@pytest.mark.parametrize(
    "other, expected",
    [
        (dict(rank=8), r"adapter\.rank: 4 -> 8"),
        (dict(members=3), r"vmap_seeds: \[\] -> \[0, 1, 2\]"),
        (dict(targets=("query", "key")), r"targets: "),
        (dict(clip=None), r"optimizer: opt_state/inner_state/0/mu/encoder/query/lora_a missing"),
    ],
)
def test_checkpoint_of_other_adapters_fails_naming_the_leaves(two_steps, other, expected):
    before = listing(two_steps)
    ck = Checkpoints(two_steps, keep_latest=1)
    with pytest.raises(CheckpointMismatchError, match=expected) as e:
        ck.restore_latest(make_state(**other), run_config(**other))
    message = str(e.value)
    assert f"step 3 in {two_steps}" in message and "--workdir" in message
    if "rank" in other:
        assert "adapters: encoder/query/lora_a shape (8, 4) vs (8, 8)" in message
        assert "optimizer: " not in message  # the cause only, not its consequences
    if "members" in other:
        assert "adapters: encoder/value/lora_b shape (4, 6) vs (3, 4, 6)" in message
    if "targets" in other:
        assert "encoder/key/lora_a missing in checkpoint" in message
        assert "encoder/value/lora_a extra in checkpoint" in message
    if "clip" in other:
        assert "(+" in message  # more than 8 leaves differ
        assert "adapters: " not in message and "config optimizer.clip_norm: 1.0 -> None" in message
    assert listing(two_steps) == before  # no fallback: nothing moved or written
    if "clip" not in other:  # also without a config, and the adapters alone
        with pytest.raises(CheckpointMismatchError):
            ck.restore_adapters(3, make_state(**other)["adapters"])
    ck.check_compatible(3, make_state(), run_config())  # the run's own trees pass


def test_vectorised_checkpoint_into_a_vectorised_run_of_another_size(tmp_path):
    ck = Checkpoints(tmp_path, keep_latest=1)
    save(ck, 1, members=2)
    with pytest.raises(CheckpointMismatchError, match=r"shape \(2, 8, 4\) vs \(4, 8, 4\)"):
        ck.restore(1, make_state(members=4), run_config(members=4))
    out = ck.restore(1, make_state(members=2), run_config(members=2))
    assert np.asarray(out["state"]["adapters"]["encoder"]["query"]["lora_a"]).shape == (2, 8, 4)


# ------------------------------------------------------------ an unwritable or full folder


def test_probe_names_the_folder_and_the_os_error(tmp_path, monkeypatch):
    # Tests run as root, where chmod does not stop writes: a regular file in the path does.
    blocker = tmp_path / "workdir"
    blocker.write_text("a file, not a folder")
    with pytest.raises(OSError, match="Not a directory") as e:
        checkpoints.probe_writable(blocker / "checkpoints")
    assert str(blocker / "checkpoints") in str(e.value) and "--workdir" in str(e.value)
    with pytest.raises(OSError, match="is a file"):
        checkpoints.probe_writable(blocker)
    with pytest.raises(OSError, match="cannot write checkpoints to .*Not a directory"):
        Checkpoints(blocker / "checkpoints", keep_latest=1)
    # A full disk: writing the probe fails with ENOSPC.
    ck = Checkpoints(tmp_path / "ok", keep_latest=1)
    ck.probe(make_state())
    real_open = open

    def full(path, *a, **k):
        if ".probe-" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, *a, **k)

    monkeypatch.setattr("builtins.open", full)
    with pytest.raises(OSError, match="No space left on device") as e:
        ck.probe()
    assert e.value.errno == errno.ENOSPC and str(tmp_path / "ok") in str(e.value)
    monkeypatch.setattr("builtins.open", real_open)
    # Less free space than one more checkpoint.
    monkeypatch.setattr(checkpoints.shutil, "disk_usage", lambda p: type("U", (), {"free": 1000})())
    with pytest.raises(OSError, match="MiB free, a checkpoint needs"):
        ck.probe(make_state())
    assert [p.name for p in (tmp_path / "ok").iterdir() if p.name.startswith(".probe")] == []


def test_a_real_write_failure_names_the_step_and_keeps_the_earlier_ones(tmp_path):
    # As root, chmod does not stop writes; a file size limit does (RLIMIT_FSIZE).
    directory = tmp_path / "checkpoints"
    out = saver(directory, "efbig", stdout=subprocess.PIPE).communicate(timeout=120)[0]
    lines = out.splitlines()
    assert lines[0] == f"errno {errno.EFBIG}", out
    assert lines[1].startswith(f"[Errno 27] could not write checkpoint step 3 to {directory}: ")
    assert "File too large" in lines[1] and "kept (steps [1, 2])" in lines[1]
    assert lines[2:] == ["steps [1, 2]", "closed"]
    # A partial `3.orbax-checkpoint-tmp` may remain (orbax's writes of other items were in
    # flight): it is no step, and the next open removes it.
    assert {p.name for p in directory.iterdir()} - {"1", "2"} <= {f"3{checkpoints.TMP_SUFFIX}"}
    ck = Checkpoints(directory, keep_latest=1)
    step, restored = ck.restore_latest(make_state(), run_config())
    assert (step, first_leaf(restored)) == (2, 2.0)
    assert first_leaf(ck.restore(1, make_state())) == 1.0


def test_failed_save_names_the_step_and_keeps_the_earlier_ones(two_steps, monkeypatch):
    from orbax.checkpoint._src.path import atomicity

    async def full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    real = atomicity.AtomicRenameTemporaryPath.finalize
    monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, "finalize", full)
    ck = Checkpoints(two_steps, keep_latest=1)
    before = listing(two_steps)
    with pytest.raises(OSError, match="could not write checkpoint step 4 to") as e:
        save(ck, 4, score=1.0)  # would be the new best and latest: both old steps would go
    assert e.value.errno == errno.ENOSPC and str(two_steps) in str(e.value)
    assert "steps [1, 3]" in str(e.value)
    assert listing(two_steps) == before  # the old steps are kept and the partial one is gone
    assert ck.all_steps() == [1, 3]
    monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, "finalize", real)
    assert save(ck, 4, score=1.0) is True
    assert ck.all_steps() == [4]
    assert first_leaf(ck.restore(4, make_state())) == 4.0


def test_by_default_the_two_latest_are_kept_so_a_damaged_newest_has_a_predecessor(tmp_path):
    """No evaluation at all (no 'best'): the default policy still keeps a step to fall back to."""
    ck = Checkpoints(tmp_path)
    for step in (1, 2, 3):
        save(ck, step)
    assert ck.all_steps() == [2, 3]
    for f in data_files(tmp_path / "3"):
        f.write_bytes(f.read_bytes()[: os.path.getsize(f) // 2])
    step, out = ck.restore_latest(make_state(), run_config())
    assert (step, first_leaf(out)) == (2, 2.0)
