"""Multi-process training on one machine: two JAX processes (jax.distributed over localhost,
gloo collectives, one CPU device each) train exactly like one process with two devices."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from morejax.train import distributed

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "configs" / "smoke_tiny.py")
TIMEOUT = 240  # a process stuck in a collective fails the test instead of blocking CI


# ----------------------------------------------------------------------------- environment


def test_job_from_env():
    explicit = {
        "MOREJAX_COORDINATOR": "localhost:1234",
        "MOREJAX_NUM_PROCESSES": "2",
        "MOREJAX_PROCESS_ID": "1",
    }
    assert distributed.job_from_env(explicit) == {
        "coordinator_address": "localhost:1234",
        "num_processes": 2,
        "process_id": 1,
    }
    alone = {**explicit, "MOREJAX_NUM_PROCESSES": "1", "MOREJAX_PROCESS_ID": "0"}
    assert distributed.job_from_env(alone) is None
    assert distributed.job_from_env({}) is None
    assert distributed.job_from_env({"SLURM_NTASKS": "1"}) is None
    assert distributed.job_from_env({"SLURM_NTASKS": "4"}) == {}  # JAX detects the rest
    assert distributed.job_from_env({"MOREJAX_DISTRIBUTED": "1"}) == {}
    assert distributed.job_from_env({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:99"}) == {
        "coordinator_address": "10.0.0.1:99"
    }
    with pytest.raises(ValueError, match="not MOREJAX_NUM_PROCESSES, MOREJAX_PROCESS_ID"):
        distributed.job_from_env({"MOREJAX_COORDINATOR": "localhost:1234"})
    with pytest.raises(ValueError, match="host:port"):
        distributed.job_from_env({**explicit, "MOREJAX_COORDINATOR": "localhost"})
    with pytest.raises(ValueError, match=r"MOREJAX_PROCESS_ID=2 must be in \[0"):
        distributed.job_from_env({**explicit, "MOREJAX_PROCESS_ID": "2"})
    with pytest.raises(ValueError, match="not an integer"):
        distributed.job_from_env({**explicit, "MOREJAX_NUM_PROCESSES": "two"})


def test_single_process_environment_joins_nothing():
    assert distributed.initialize_from_env({"SLURM_NTASKS": "1"}) is False
    assert not jax.distributed.is_initialized()


# ----------------------------------------------------------------------------- two processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _env(devices: int, **extra: str) -> dict:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MOREJAX_COORDINATOR", "MOREJAX_NUM_", "MOREJAX_PROCESS_", "SLURM_"))
        and k not in ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS", "MOREJAX_DISTRIBUTED")
    }
    env.update(
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        JAX_PLATFORMS="cpu",
        PYTHONPATH=str(ROOT),
        **extra,
    )
    return env


def _start(workdir: Path, env: dict, log: Path) -> subprocess.Popen:
    # Steps 1 and 2 have global batches whose halves fit different buckets (24/32, 8/16):
    # each process alone would pad its rows to another length than the other's.
    cmd = [sys.executable, "-m", "morejax.cli", "train", SMOKE, "--workdir", str(workdir)]
    cmd += ["--no-progress", "--set", "steps=4", "--set", "eval_every=0"]
    cmd += ["--set", "data.buckets=(8, 16, 24, 32)", "--set", "data.eval_limit=32"]
    out = open(log, "w")  # files, not pipes: a process blocked on a full pipe would hang its peer
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def _wait(procs: list[subprocess.Popen], logs: list[Path]) -> None:
    try:
        for p in procs:
            p.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()
    for p, log in zip(procs, logs):
        tail = log.read_text()[-3000:]
        assert p.returncode == 0, f"{log.name} exited with {p.returncode}:\n{tail}"


def _rows(workdir: Path, split: str) -> list[dict]:
    """The rows of one split, less their wall-clock time (the two runs differ only in that)."""
    rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "time"} for r in rows if r["split"] == split]


def test_two_processes_train_like_one(shared_data, tmp_path):
    """The reference is one process with 2 devices: the same mesh (data=2) and the same rows
    per device as 2 processes x 1 device, so both run the same SPMD program on the same
    shards and the one cross-device sum (a + b) is exact: losses and gradient norms agree
    bit for bit. With 1 device the 16-row sums would be ordered differently (~1e-7).
    Before the global bucket, process 1 padded its half of steps 1 and 2 to 24 and 8
    tokens where the reference pads to 32 and 16: the sums round differently."""
    # Prepare SST-2 once here: three processes preparing it at once would race.
    from morejax.data import glue

    glue.prepare("sst2", local_dir=shared_data / "glue")
    one, two = tmp_path / "one", tmp_path / "two"
    port = _free_port()
    logs = [tmp_path / "one.log", tmp_path / "p0.log", tmp_path / "p1.log"]
    procs = [_start(one, _env(2), logs[0])]
    for i in (0, 1):
        job = dict(
            MOREJAX_COORDINATOR=f"localhost:{port}",
            MOREJAX_NUM_PROCESSES="2",
            MOREJAX_PROCESS_ID=str(i),
        )
        procs.append(_start(two, _env(1, **job), logs[1 + i]))
    _wait(procs, logs)
    assert "devices 2" in logs[0].read_text() and "devices 2" in logs[1].read_text()
    ref, got = _rows(one, "train"), _rows(two, "train")
    assert [r["step"] for r in got] == [r["step"] for r in ref] == [1, 2, 3, 4]  # process 0 only
    np.testing.assert_allclose([r["loss"] for r in got], [r["loss"] for r in ref], rtol=1e-5)
    for key in ("loss", "grad_norm"):
        assert [r[key] for r in got] == [r[key] for r in ref], key
    assert _rows(two, "eval") == _rows(one, "eval")  # evaluation gathers over processes
    assert json.loads((two / "results.json").read_text())["finished"]
    assert (two / "checkpoints" / "4").is_dir()  # orbax saved across both processes
