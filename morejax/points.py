"""Resumable tables: a list of points, each kept once finished and skipped on a rerun.

`morejax sweep` and the scripts in experiments/ (the GLUE and reasoning tables, the MoRe
ablation, the TPU plans) are all this: work that a session's time limit or a preemption
may stop at any moment, so every finished point is written at once, atomically, and the
same command picks up what is missing. The points are keyed (`key`) on what made them,
so a changed config runs again instead of reusing another config's result.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol


class Point(Protocol):
    name: str


class Stopped(Exception):
    """The whole job is being stopped (a preemption), not one point failing: the run ends
    with `exit_code` and the next one resumes."""

    exit_code = 75  # EX_TEMPFAIL: schedulers (and `morejax sweep`) read it as "retry later"


def write_text(path: Path, text: str) -> None:
    """Via a temporary file and a rename: a crash leaves the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, newline="")
    os.replace(tmp, path)


def write_json(path: Path, payload) -> None:
    write_text(path, json.dumps(payload, indent=1) + "\n")


def read_json(path: Path) -> dict | None:
    """The file's JSON, or None when it is absent or unreadable (e.g. cut by a kill)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def key(payload) -> str:
    """A short hash of a JSON-able value (a resolved config): equal values, equal keys."""
    text = json.dumps(payload, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def load_average() -> float:
    return round(os.getloadavg()[0], 1) if hasattr(os, "getloadavg") else float("nan")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    """Where a result was made, for its record."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }


def machine_text(with_load: bool = True) -> str:
    """The same facts as one line for a table's caption, with jax's version."""
    import jax

    text = (
        f"{os.cpu_count()} CPU cores ({platform.machine()}, {platform.system()}), "
        f"Python {platform.python_version()}, jax {jax.__version__}"
    )
    return text + (f", load {load_average():.1f} at start" if with_load else "")


def finished(stage: Callable[[dict], Iterable[Point]], load: Callable) -> dict:
    """{name: record} of the finished points, following the stages until no new one is done
    (a later stage's points exist only once their inputs are finished)."""
    done: dict = {}
    while True:
        new = {}
        for p in stage(done):
            if p.name not in done:
                rec = load(p)
                if rec is not None:
                    new[p.name] = rec
        if not new:
            return done
        done.update(new)


def run(
    stage: Callable[[dict], Iterable[Point]],
    *,
    load: Callable[[Point], dict | None],
    work: Callable[[Point], dict | None],
    report: Callable[[dict], None] | None = None,
    failed: Callable[[Point, Exception], None] | None = None,
    max_points: int | None = None,
) -> int:
    """Run, in order, each point `stage(finished)` lists that `load` does not find finished.

    `work(point)` runs one point and returns its record (None: it cannot run yet, passed
    over in this run). `report(finished)` is called before each point and at the end (the
    table with what is still missing). Without `failed`, an error stops the run; with it,
    `failed(point, error)` records the error and the run goes on. Returns 0, 1 when a point
    failed, or a `Stopped`'s exit code (the caller's next run resumes).
    """
    ran, passed, failures = 0, set(), 0
    while True:
        done = finished(stage, load)
        todo = [p for p in stage(done) if p.name not in done and p.name not in passed]
        if report is not None:
            report(done)
        if not todo or (max_points is not None and ran >= max_points):
            return 1 if failures else 0
        point = todo[0]
        try:
            record = work(point)
        except Stopped as e:
            if report is not None:
                report(finished(stage, load))
            print(f"preempted: {e}; rerun the same command to resume", file=sys.stderr, flush=True)
            return e.exit_code
        except Exception as e:
            if failed is None:
                raise
            failed(point, e)
            failures += 1
            passed.add(point.name)
            continue
        if record is None:
            passed.add(point.name)
        else:
            ran += 1
