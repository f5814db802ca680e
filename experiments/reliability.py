"""Faults injected into real training runs, and every bad input tried, with what happened.

    python experiments/reliability.py --seeds 4 --out results/reliability.md

Each fault runs `morejax train configs/smoke_tiny.py` (a tiny model on real SST-2 rows) in a
subprocess, stops it (SIGKILL at a random moment, possibly inside a checkpoint write;
SIGTERM / SIGINT at a random step), resumes it with the same command, and compares the
final adapters and optimizer state with an uninterrupted run: they must be bit-identical.
Then NaN steps (stop / skip), a damaged newest checkpoint, a checkpoint of another config,
an unwritable workdir and a list of bad inputs, each with the exact message it gave.
`--seeds 1 --quick` is the CI setting (tests/test_scripts.py).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "configs" / "smoke_tiny.py")
STEPS = 16
# Every step is checkpointed, so a SIGKILL often lands inside a save.
RUN_SETS = (f"steps={STEPS}", "eval_every=0", "checkpoint_every=1", "data.eval_limit=32")


def command(workdir: Path, *sets: str, flags: tuple = ()) -> list[str]:
    cmd = [sys.executable, "-m", "morejax.cli", "train", SMOKE, "--workdir", str(workdir)]
    for s in (*RUN_SETS, *sets):
        cmd += ["--set", s]
    return cmd + ["--no-progress", *flags]


def env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")


def run(workdir: Path, *sets: str, flags: tuple = (), timeout: float = 600):
    return subprocess.run(
        command(workdir, *sets, flags=flags), cwd=ROOT, env=env(), capture_output=True,
        text=True, timeout=timeout,
    )  # fmt: skip


def last_step(workdir: Path) -> int:
    path = workdir / "metrics.jsonl"
    if not path.is_file():
        return 0
    steps = [json.loads(x)["step"] for x in path.read_text().splitlines() if '"train"' in x]
    return max(steps, default=0)


def interrupt(workdir: Path, sig: int, at_step: int, delay: float, timeout: float = 600):
    """Start a run, send `sig` once it has logged `at_step` (plus `delay` seconds), wait."""
    proc = subprocess.Popen(
        command(workdir), cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    start = time.time()
    while last_step(workdir) < at_step and proc.poll() is None:
        if time.time() - start > timeout:
            proc.kill()
            raise TimeoutError(f"no step {at_step} within {timeout} s")
        time.sleep(0.02)
    time.sleep(delay)
    if proc.poll() is None:
        proc.send_signal(sig)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def final_state(workdir: Path, step: int = STEPS) -> dict[str, np.ndarray]:
    """Adapters and optimizer state of a step, as {path: array}."""
    import jax
    import orbax.checkpoint as ocp

    out = {}
    for item in ("adapters", "optimizer"):
        tree = ocp.StandardCheckpointer().restore(workdir / "checkpoints" / str(step) / item)
        for kp, v in jax.tree_util.tree_flatten_with_path(tree)[0]:
            out[f"{item}{jax.tree_util.keystr(kp)}"] = np.asarray(v)
    return out


def mismatches(a: dict, b: dict) -> list[str]:
    if set(a) != set(b):
        return [f"leaves differ: {sorted(set(a) ^ set(b))[:4]}"]
    return [k for k in sorted(a) if a[k].dtype != b[k].dtype or not np.array_equal(a[k], b[k])]


SIGNALS = {"SIGKILL": signal.SIGKILL, "SIGTERM": signal.SIGTERM, "SIGINT": signal.SIGINT}


def chain(root: Path, reference: dict, kinds: list[str], rng: random.Random) -> list[dict]:
    """Faults one after another on one run (each stop resumed by the next start), then a
    final resume compared with the reference. One report row per fault."""
    workdir = root / f"chain-{rng.randrange(10**6)}"
    rows, floor = [], 0
    for kind in kinds:
        at = min(rng.randint(floor + 1, floor + max(1, (STEPS - floor) // 3)), STEPS - 3)
        delay = rng.uniform(0.0, 0.1)
        code, _, err = interrupt(workdir, SIGNALS[kind], at, delay)
        floor = last_step(workdir)
        kept = [int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()]
        line = [x for x in err.splitlines() if x.startswith(("preempted", "error"))]
        rows.append(
            {
                "fault": kind,
                "sent after step": at,
                "delay s": round(delay, 3),
                "exit code": code,
                "last logged step": floor,
                "resumes from": max(kept, default=0),
                "message": " ".join(line)[:160],
            }
        )
    resumed = run(workdir)
    if resumed.returncode != 0:
        result = f"resume failed: {resumed.stderr.strip()[-300:]}"
    else:
        bad = mismatches(reference, final_state(workdir))
        result = len(bad) if not bad else bad
    for row in rows:
        row["mismatches at the end"] = result
    return rows


def bad_input_cases(root: Path, quick: bool) -> list[tuple[str, list[str]]]:
    """(what, argv) of bad inputs the command line must answer with one clear line."""
    tsv = root / "badtsv" / "SST-2"
    tsv.mkdir(parents=True, exist_ok=True)
    for name in ("train.tsv", "dev.tsv", "test.tsv"):
        (tsv / name).write_text("text\tnot_a_label\nhello\t1\n")
    w = str(root / "bad")
    cases = [
        ("config key that does not exist", ["params", SMOKE, "--set", "adapter.rnak=8"]),
        ("target pattern that matches no kernel",
         ["params", SMOKE, "--set", "targets='.*/nothing/kernel'"]),
        ("a value that does not parse", ["params", SMOKE, "--set", "adapter.rank=(4"]),
        ("rank 0", ["params", SMOKE, "--set", "adapter.rank=0"]),
        ("unknown GLUE task", ["params", SMOKE, "--set", "data.task=sst3"]),
        ("head that contradicts the task", ["params", SMOKE, "--set", "model.num_labels=3"]),
        ("data folder that does not exist",
         ["train", SMOKE, "--workdir", w, "--set", "data.local_dir=/nonexistent/glue"]),
        ("data file with missing columns",
         ["train", SMOKE, "--workdir", w, "--set", f"data.local_dir={tsv.parent}",
          "--set", f"data.data_dir={root / 'tfds'}"]),
        ("config file that does not exist", ["params", str(root / "nope.py")]),
    ]  # fmt: skip
    return cases[:1] if quick else cases


def bad_inputs(root: Path, quick: bool) -> list[dict]:
    rows = []
    for what, argv in bad_input_cases(root, quick):
        cmd = [sys.executable, "-m", "morejax.cli", *argv]
        p = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600)
        lines = [x for x in p.stderr.strip().splitlines() if x.startswith("error:")]
        rows.append(
            {
                "input": what,
                "exit code": p.returncode,
                "traceback": "Traceback" in p.stderr,
                "message": lines[-1] if lines else p.stderr.strip()[-200:],
            }
        )
    return rows


def nan_cases(root: Path, quick: bool = False) -> list[dict]:
    """A poisoned step: 'stop' names it and keeps the last good checkpoint; 'skip' counts it."""
    rows = []
    for mode in ("stop",) if quick else ("stop", "skip"):
        w = root / f"nan-{mode}"
        p = run(w, "inject_nan_at=5", f"nonfinite='{mode}'")
        kept = sorted(int(x.name) for x in (w / "checkpoints").iterdir() if x.name.isdigit())
        finite = all(np.isfinite(v).all() for v in final_state(w, kept[-1]).values())
        result = json.loads((w / "results.json").read_text()) if mode == "skip" else {}
        lines = [x for x in p.stderr.splitlines() if x.startswith("error:")]
        rows.append(
            {
                "case": f"NaN gradients at step 5, nonfinite='{mode}'",
                "exit code": p.returncode,
                "checkpoints kept": kept,
                "all finite": finite,
                "skipped steps": result.get("skipped_steps"),
                "message": lines[-1] if lines else "",
            }
        )
    return rows


def checkpoint_cases(root: Path, reference_dir: Path) -> list[dict]:
    """A damaged newest checkpoint, a checkpoint of another config, an unwritable workdir."""
    import shutil

    rows = []
    w = root / "damaged"
    shutil.copytree(reference_dir, w)
    (w / "results.json").unlink()
    newest = max(int(x.name) for x in (w / "checkpoints").iterdir() if x.name.isdigit())
    for f in (w / "checkpoints" / str(newest) / "adapters").rglob("*"):
        if f.is_file() and f.stat().st_size > 0:
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])  # truncate every file
    p = run(w)  # step 15 is intact: it resumes there and trains step 16 again
    rows.append(_row(f"newest checkpoint (step {newest}) damaged: files truncated", p))
    if p.returncode == 0:
        same = mismatches(final_state(reference_dir), final_state(w)) == []
        rows[-1]["result equals the uninterrupted run"] = same
    w2 = root / "other-config"
    shutil.copytree(reference_dir, w2)
    p = run(w2, "adapter.rank=8")
    rows.append(_row("resume with another adapter rank", p))
    p = run(w2, "adapter.rank=8", flags=("--allow-config-change",))
    rows.append(_row("the same, with --allow-config-change", p))
    blocker = root / "a-file"
    blocker.write_text("not a folder")
    p = run(blocker / "workdir")
    rows.append(_row("workdir under a regular file (unwritable)", p))
    return rows


def _row(case: str, p: subprocess.CompletedProcess) -> dict:
    keep = [x for x in (p.stdout + p.stderr).splitlines() if "error:" in x or "damaged" in x]
    text = " | ".join(keep)
    return {"case": case, "exit code": p.returncode, "message": text[:500]}


def table(rows: list[dict]) -> str:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append("| " + " | ".join(str(r.get(c, "")).replace("|", "/") for c in cols) + " |")
    return "\n".join(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=4, help="random faults of each kind")
    parser.add_argument("--quick", action="store_true", help="CI: fewer cases")
    parser.add_argument("--workdir", default="runs/reliability")
    parser.add_argument("--out", help="write the Markdown report here")
    args = parser.parse_args(argv)
    root = Path(args.workdir).absolute()
    if root.exists():
        import shutil

        shutil.rmtree(root)
    t0 = time.time()
    reference = run(root / "reference")
    if reference.returncode != 0:
        print(reference.stderr[-2000:], file=sys.stderr)
        return 1
    ref_state = final_state(root / "reference")
    rng = random.Random(0)
    kinds = ["SIGTERM"] if args.quick else ["SIGKILL", "SIGTERM", "SIGINT", "SIGKILL"]
    faults = [row for _ in range(args.seeds) for row in chain(root, ref_state, kinds, rng)]
    bad = bad_inputs(root, args.quick)
    nans = nan_cases(root, args.quick)
    ckpts = [] if args.quick else checkpoint_cases(root, root / "reference")
    wrong = sum(1 for f in faults if f["mismatches at the end"] != 0)
    lines = [
        "# Reliability: faults injected into training runs, and bad inputs",
        "",
        f"Command: `python experiments/reliability.py --seeds {args.seeds}"
        + (" --quick" if args.quick else "") + (f" --out {args.out}`" if args.out else "`"),
        f"Machine: {os.cpu_count()} CPU cores; {time.strftime('%Y-%m-%d')}; "
        f"{time.time() - t0:.0f} s in all.",
        "",
        f"## Faults: {len(faults)} stops and resumes in {args.seeds} chains, "
        f"{wrong} with mismatches",
        "",
        "Each chain: configs/smoke_tiny.py, " + ", ".join(RUN_SETS) + "; stopped by each fault "
        "in turn at a random step (plus a random delay, so a SIGKILL can land inside a "
        "checkpoint write), restarted with the same command, and at the end compared (adapters "
        "and optimizer state at the last step, bit for bit) with an uninterrupted run. "
        "SIGTERM / SIGINT exit with code 75 (preempted) after a checkpoint.",
        "",
        table(faults),
        "",
        "## Non-finite steps",
        "",
        table(nans),
        "",
    ]  # fmt: skip
    if ckpts:
        lines += ["## Checkpoints", "", table(ckpts), ""]
    lines += ["## Bad inputs (each one line on stderr, exit code 2, no traceback)", ""]
    lines += [table(bad), ""]
    report = "\n".join(lines)
    print(report)
    if args.out:
        Path(args.out).write_text(report)
    ok = wrong == 0 and all(r["exit code"] == 2 and not r["traceback"] for r in bad)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
