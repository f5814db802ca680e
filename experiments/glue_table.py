"""The MoRe paper's GLUE comparison at CPU scale: MiniLM-L6 on CoLA, SST-2 and RTE with full
fine-tuning, LoRA, DoRA, PiSSA, MiLoRA and MoRe (`configs/glue_table_minilm.py`).

    python experiments/glue_table.py              # runs what is missing, writes the table
    python experiments/glue_table.py --dry-run    # the points, which are done, estimated time
    python experiments/glue_table.py --report     # rewrite results/glue_small.md, train nothing

Per cell (task x method): the method's learning-rate grid on seed 0 as one vectorised
program, the best rate on dev, then seeds 1 and 2 at that rate as one more program (seed 0's
member of the first program is the third seed: a run's seed draws all of its randomness, so
it is that run). Each finished program's result (members' best dev scores, learning curves,
wall time) is written atomically to `results/glue_small/<point>.json` and the Markdown table
is rewritten at once, so the table is valid (with a list of what is missing) whenever the
command stops. Rerunning skips finished points (keyed on the resolved config: a changed
config reruns them) and resumes an interrupted one from its latest checkpoint in
`runs/glue_small/`. SIGTERM / Ctrl-C: the step finishes, a checkpoint is written, exit 75.

The point machinery here (`Point`, `run_points`, on `morejax.points`) is shared with
`experiments/more_ablation.py`.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from morejax import points  # noqa: E402

CONFIG = ROOT / "configs" / "glue_table_minilm.py"
TASK_NAMES = {"cola": "CoLA (MCC)", "sst2": "SST-2 (acc.)", "rte": "RTE (acc.)"}
METHOD_NAMES = {
    "full": "Full (q,k,v kernels)",
    "lora": "LoRA r=8",
    "dora": "DoRA r=8",
    "pissa": "PiSSA r=8",
    "milora": "MiLoRA r=8",
    "more": "MoRe nb=4 r=8",
}

# Seconds per training step of one member at the table's CPU sizes (LoRA), per-method cost
# factors, fixed seconds per program (model load, compilation) and per member-evaluation of
# the dev set. CoLA / SST-2: fitted to the table's own programs of 2026-12-03 (packed rows,
# quiet 2 cores: 3-member programs 237-341 s, 2-member 156-214 s); RTE: its LoRA and Full
# learning-rate programs (3 members, 150 steps: 620-642 s).
STEP_S = {"cola": 0.18, "sst2": 0.34, "rte": 1.25}
METHOD_COST = {"full": 1.05, "lora": 1.0, "dora": 1.1, "pissa": 1.0, "milora": 1.0, "more": 1.05}
PROGRAM_S = 30.0
EVAL_S = {"cola": 3.0, "sst2": 3.0, "rte": 3.0}

# Reduced setting (CI smoke run, --reduced): a tiny random model, a few steps.
TINY = {
    "model.pretrained": False,
    "model.tokenizer": "minilm-l6",
    "model.overrides": {
        "num_layers": 1,
        "hidden_size": 32,
        "num_heads": 2,
        "intermediate_size": 64,
    },
    "data.max_len": 32,
    "data.train_limit": 128,
    "data.eval_limit": 64,
    "data.num_threads": 0,
    "batch_size": 8,
    "steps": 4,
    "eval_every": 2,
    "checkpoint_every": 2,
    "log_every": 1,
}


# ----------------------------------------------------------------------------- the machinery


@dataclasses.dataclass
class Point:
    """One program: `overrides` of the config file (its `config()` arguments included),
    written to `<results>/<name>.json` when finished; `est_s` its estimated seconds."""

    name: str
    config: Path
    overrides: dict
    est_s: float = 0.0
    sets: tuple[str, ...] = ()  # `--set PATH=VALUE` text given to the driver, before overrides


def load_result(results: Path, point: Point) -> dict | None:
    """The point's finished result, or None (absent, unreadable, or of another config)."""
    out = points.read_json(results / f"{point.name}.json")
    return out if out is not None and out.get("config_key") == point_key(point) else None


def point_config(point: Point):
    from morejax.train import config

    return config.resolve(config.load(point.config, point.sets, point.overrides))


def point_key(point: Point) -> str:
    from morejax.cli.sweep import config_key

    return config_key(point_config(point))


def curves(workdir: Path) -> dict:
    """Per-member dev score and training loss against step, from the run's metrics.jsonl."""
    out = {"eval_step": [], "score": [], "train_step": [], "loss": []}
    path = workdir / "metrics.jsonl"
    if not path.is_file():
        return out
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line cut by a kill
        if row.get("split") == "eval" and "score" in row:
            out["eval_step"].append(row["step"])
            out["score"].append(np.atleast_1d(row["score"]).tolist())
        elif row.get("split") == "train" and "loss" in row:
            out["train_step"].append(row["step"])
            out["loss"].append(np.round(np.atleast_1d(row["loss"]), 5).tolist())
    return out


def run_point(point: Point, runs: Path, results: Path) -> dict:
    """Train the point (resuming its workdir), then write its result JSON atomically."""
    from morejax.cli.train import run_one
    from morejax.train import config, setup

    cfg = point_config(point)
    key = point_key(point)
    workdir = runs / f"{point.name}-{key}"
    spent_file = workdir / "driver_wall_s.json"  # wall time of earlier, interrupted tries
    spent = json.loads(spent_file.read_text())["wall_s"] if spent_file.is_file() else 0.0
    t0 = time.time()
    try:
        out = run_one(cfg, workdir, progress=False)
    finally:
        if not (workdir / "results.json").is_file():
            points.write_json(spent_file, {"wall_s": spent + time.time() - t0})
    exp = config.build(cfg)
    summary = setup.param_summary(exp)
    members = out.get("members") or {"seeds": [exp.seed], "learning_rates": [None]}
    best = out.get("best_members") or [{"value": out["best"], "step": out["best_step"]}]
    final = out["final"] if isinstance(out["final"], list) else [out["final"]]
    record = {
        "name": point.name,
        "config_key": key,
        "overrides": {
            k: v if not isinstance(v, tuple) else list(v) for k, v in point.overrides.items()
        },
        "metric": out["metric"],
        "members": [
            {
                "seed": seed,
                "learning_rate": lr if lr is not None else exp.optimizer.learning_rate,
                "best": b["value"],
                "best_step": b["step"],
                "final": (f or {}).get(out["metric"]),
            }
            for seed, lr, b, f in zip(members["seeds"], members["learning_rates"], best, final)
        ],
        "steps": out["steps"],
        "adapter_params": summary.adapter_params,
        "other_trainable": summary.other_trainable,
        "wall_s": round(spent + time.time() - t0, 1),
        "curves": curves(workdir),
        "workdir": str(workdir),
        "machine": points.machine(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    points.write_json(results / f"{point.name}.json", record)
    return record


def run_points(
    next_points: Callable[[dict], list[Point]],
    *,
    runs: Path,
    results: Path,
    report: Callable[[dict], None],
    max_points: int | None = None,
) -> int:
    """Every point `next_points(done)` yields (later stages appear once their inputs are
    done), in order, through `morejax.points.run`; returns the exit code."""

    def work(point: Point) -> dict:
        print(f"[table] {point.name}: running (est. {point.est_s / 60:.0f} min)", flush=True)
        rec = run_point(point, runs, results)
        print(f"[table] {point.name}: done in {rec['wall_s']:.0f} s", flush=True)
        return rec

    load = lambda p: load_result(results, p)
    return points.run(next_points, load=load, work=work, report=report, max_points=max_points)


def finished(next_points: Callable[[dict], list[Point]], results: Path) -> dict:
    return points.finished(next_points, lambda p: load_result(results, p))


def run_table(stage, runs: Path, results: Path, report, out: Path, max_points, tag: str) -> int:
    """Run what is missing, then print the report and what is still missing."""
    code = run_points(stage, runs=runs, results=results, report=report, max_points=max_points)
    missing = report(finished(stage, results))
    print(out.read_text())
    print(f"[{tag}] missing: {', '.join(missing) if missing else 'nothing'}")
    return code


def mean_std(values: list[float]) -> tuple[float, float]:
    v = np.asarray(values, np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def fmt_time(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.2f} h"


# ----------------------------------------------------------------------------- the table


@dataclasses.dataclass
class Plan:
    """What the table covers: tasks, methods, learning-rate grids, seeds, config overrides."""

    tasks: tuple[str, ...]
    methods: tuple[str, ...]
    grid: dict
    seeds: tuple[int, ...]
    sets: dict
    steps: dict
    text_sets: tuple[str, ...] = ()


def make_plan(reduced: bool, text_sets=()) -> Plan:
    from morejax.train import config

    module = config.load_module(CONFIG)
    steps = {t: module.CPU[t][0] for t in module.TASKS}
    if not reduced:
        plan = Plan(module.TASKS, module.METHODS, module.LR_GRID, module.SEEDS, {}, steps)
    else:
        grid = {"more": module.LR_GRID["more"][1:]}
        plan = Plan(("cola",), ("more",), grid, (0, 1), dict(TINY), {"cola": 4})
    plan.text_sets = tuple(text_sets)
    return plan


def estimate(plan: Plan, task: str, method: str, members: int) -> float:
    steps = plan.steps[task]
    evals = 6 if not plan.sets else 2
    per_member = steps * STEP_S[task] * METHOD_COST[method] + evals * EVAL_S[task]
    return PROGRAM_S + members * per_member


def chosen_lr(plan: Plan, rec: dict) -> tuple[float, float]:
    """(learning rate, its seed-0 best dev score): the best on dev, ties to the lower rate."""
    pairs = sorted((m["learning_rate"], m["best"]) for m in rec["members"])
    lr, score = max(pairs, key=lambda p: (p[1], -p[0]))
    return lr, score


def table_points(plan: Plan) -> Callable[[dict], list[Point]]:
    def stage(done: dict) -> list[Point]:
        out = []
        for task in plan.tasks:
            for method in plan.methods:
                base = {"task": task, "method": method, **plan.sets}
                grid = plan.grid[method]
                lr_name = f"{task}-{method}-lr"
                lr_point = Point(
                    lr_name,
                    CONFIG,
                    {**base, "seed": plan.seeds[0], "vmap_learning_rates": tuple(grid)},
                    estimate(plan, task, method, len(grid)),
                    plan.text_sets,
                )
                out.append(lr_point)
                rest = plan.seeds[1:]
                if lr_name in done and rest:
                    lr, _ = chosen_lr(plan, done[lr_name])
                    seeds = {**base, "optimizer.learning_rate": lr, "vmap_seeds": tuple(rest)}
                    out.append(
                        Point(
                            f"{task}-{method}-seeds",
                            CONFIG,
                            seeds,
                            estimate(plan, task, method, len(rest)),
                            plan.text_sets,
                        )
                    )
                elif rest:  # not runnable yet: a placeholder for the estimate and missing list
                    out.append(
                        Point(
                            f"{task}-{method}-seeds",
                            CONFIG,
                            {},
                            estimate(plan, task, method, len(rest)),
                        )
                    )
        return out

    def runnable(done: dict) -> list[Point]:
        return [p for p in stage(done) if p.overrides]

    runnable.all_points = stage  # type: ignore[attr-defined]
    return runnable


def cell(plan: Plan, done: dict, task: str, method: str) -> dict | None:
    """A finished cell: its seeds' best dev scores at the chosen rate, wall time, params."""
    lr_rec, seed_rec = done.get(f"{task}-{method}-lr"), done.get(f"{task}-{method}-seeds")
    if lr_rec is None or (seed_rec is None and len(plan.seeds) > 1):
        return None
    lr, _ = chosen_lr(plan, lr_rec)
    scores = [m["best"] for m in lr_rec["members"] if m["learning_rate"] == lr]
    wall = lr_rec["wall_s"]
    if seed_rec is not None:
        scores += [m["best"] for m in seed_rec["members"]]
        wall += seed_rec["wall_s"]
    mean, std = mean_std(scores)
    return {
        "lr": lr,
        "scores": scores,
        "mean": mean,
        "std": std,
        "wall_s": wall,
        "adapter_params": lr_rec["adapter_params"],
        "other_trainable": lr_rec["other_trainable"],
    }


def trainable_count(c: dict) -> int:
    """Counted like the papers: the adapter (Full: the q,k,v kernels), the head left out."""
    return c["adapter_params"] or c["other_trainable"] - HEAD_PARAMS


HEAD_PARAMS = 148_610  # MiniLM-L6's classification head (384*384 + 384 + 384*2 + 2)


def markdown(plan: Plan, points_fn, done: dict, header: str) -> tuple[str, list[str]]:
    """The Markdown report and the names of the missing points."""
    all_points = points_fn.all_points(done)
    missing = [p for p in all_points if p.name not in done]
    cells = {(t, m): cell(plan, done, t, m) for t in plan.tasks for m in plan.methods}
    lines = [header, ""]
    lines += [
        "| method | trainable params | "
        + " | ".join(TASK_NAMES.get(t, t) for t in plan.tasks)
        + " | average | wall time (all programs of the row) |",
        "|---|---:|" + "---:|" * len(plan.tasks) + "---:|---:|",
    ]
    for m in plan.methods:
        row = [METHOD_NAMES.get(m, m)]
        cs = [cells[(t, m)] for t in plan.tasks]
        have = [c for c in cs if c]
        any_rec = [done[f"{t}-{m}-lr"] for t in plan.tasks if f"{t}-{m}-lr" in done]
        row.append(f"{trainable_count(any_rec[0]):,}" if any_rec else "")
        row += [f"{100 * c['mean']:.1f} ± {100 * c['std']:.1f}" if c else "missing" for c in cs]
        row.append(
            f"{100 * np.mean([c['mean'] for c in cs]):.1f}" if len(have) == len(cs) else "missing"
        )
        row.append(fmt_time(sum(c["wall_s"] for c in have)) if have else "")
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "Per cell: chosen learning rate, seeds' best dev scores (x100), wall time.", ""]
    lines += ["| task | method | lr | seeds | wall |", "|---|---|---:|---|---:|"]
    for (t, m), c in cells.items():
        if c:
            seeds = ", ".join(f"{100 * s:.1f}" for s in c["scores"])
            lines.append(f"| {t} | {m} | {c['lr']:g} | {seeds} | {fmt_time(c['wall_s'])} |")
    lines += ["", "Learning-rate sweep, seed 0 (best dev score x100 per rate):", ""]
    width = max(len(g) for g in plan.grid.values())
    lines += ["| task | method | " + " | ".join(["rate: score"] * width) + " |"]
    lines += ["|---|---|" + "---|" * width]
    for t in plan.tasks:
        for m in plan.methods:
            rec = done.get(f"{t}-{m}-lr")
            if rec:
                parts = [f"{x['learning_rate']:g}: {100 * x['best']:.1f}" for x in rec["members"]]
                lines.append(f"| {t} | {m} | " + " | ".join(parts) + " |")
    lines += ["", ranking(plan, cells), ""]
    gap_text = gaps(plan, cells)
    if gap_text:
        lines += [gap_text, ""]
    left = sum(p.est_s for p in missing)
    if missing:
        lines += [
            f"**Missing ({len(missing)} programs, est. {fmt_time(left)}):** "
            + ", ".join(p.name for p in missing)
            + ". Rerun the command to finish them.",
        ]
    else:
        lines.append("All points finished.")
    return "\n".join(lines) + "\n", [p.name for p in missing]


def ranking(plan: Plan, cells: dict) -> str:
    """The small-scale ranking in words, and where it agrees with the paper's CoLA points."""
    full = [m for m in plan.methods if all(cells[(t, m)] for t in plan.tasks)]
    if not full:
        return "Ranking: no method has all its cells yet."
    avg = {m: np.mean([cells[(t, m)]["mean"] for t in plan.tasks]) for m in full}
    order = sorted(full, key=lambda m: -avg[m])
    text = "Ranking by average here: " + " > ".join(METHOD_NAMES.get(m, m) for m in order) + "."
    cola = {m: cells.get(("cola", m)) for m in ("more", "lora")}
    if all(cola.values()):
        a, b = cola["more"]["mean"], cola["lora"]["mean"]
        verdict = "agrees with" if a > b else "disagrees with"
        text += (
            f" On CoLA MoRe {100 * a:.1f} vs LoRA {100 * b:.1f}: this {verdict} the paper's "
            "RoBERTa-large CoLA points (MoRe nb4 r4 69.9 vs LoRA r=8 68.3)"
            + (
                ", within one seed std"
                if abs(a - b) < max(cola["more"]["std"], cola["lora"]["std"])
                else ""
            )
            + "."
        )
    return text


ADAPTERS = ("lora", "dora", "pissa", "more", "milora")


def gaps(plan: Plan, cells: dict) -> str:
    """The gaps the reading quotes, from the unrounded cell means (points x100), so that no
    sentence rests on differences of rounded cells."""
    have = [m for m in ADAPTERS if m in plan.methods and all(cells[(t, m)] for t in plan.tasks)]
    if len(have) < 2:
        return ""
    mean = {(t, m): 100 * cells[(t, m)]["mean"] for t in plan.tasks for m in have}
    avg = {m: float(np.mean([mean[(t, m)] for t in plan.tasks])) for m in have}
    name = lambda m: METHOD_NAMES.get(m, m)  # noqa: E731
    parts = []
    rest = [m for m in have if m != "milora"]
    if len(rest) >= 2:
        spread = max(avg[m] for m in rest) - min(avg[m] for m in rest)
        parts.append(f"the average spans {spread:.2f} over {', '.join(map(name, rest))}")
    for t in plan.tasks:
        row = [mean[(t, m)] for m in have]
        parts.append(f"{TASK_NAMES.get(t, t)} spans {max(row) - min(row):.2f} over all {len(have)}")
    if {"more", "lora"} <= set(have):
        diffs = ", ".join(
            f"{TASK_NAMES.get(t, t)} {mean[(t, 'more')] - mean[(t, 'lora')]:+.2f}"
            for t in plan.tasks
        )
        parts.append(f"MoRe minus LoRA: {diffs}")
    if "milora" in have and len(rest) >= 1:
        for t in plan.tasks:
            behind = [mean[(t, m)] - mean[(t, "milora")] for m in rest]
            parts.append(
                f"the others minus MiLoRA on {TASK_NAMES.get(t, t)}: {min(behind):+.2f} to "
                f"{max(behind):+.2f}"
            )
    return "Gaps between adapters (unrounded means, points): " + "; ".join(parts) + "."


def header_text(plan: Plan, reduced: bool, cmd: str) -> str:
    m = points.machine()
    setting = "REDUCED smoke setting (tiny random model)" if reduced else "CPU setting"
    return (
        f"## Table ({setting})\n\n"
        f"Regenerate: `{cmd}` (resumable; `--dry-run` lists points and time left). "
        f"Machine of this write: {m['platform']}, {m['cpu_count']} CPUs, "
        f"{datetime.date.today().isoformat()}. Dev set, best checkpoint per seed; mean ± std "
        f"over seeds {', '.join(map(str, plan.seeds))} at the learning rate chosen on seed 0."
    )


def write_report(path: Path, text: str) -> None:
    """Replace the generated section of the report (between its markers), keep the rest."""
    start, end = "<!-- table:start -->", "<!-- table:end -->"
    block = f"{start}\n{text}{end}"
    old = path.read_text() if path.is_file() else ""
    if start in old and end in old:
        new = old[: old.index(start)] + block + old[old.index(end) + len(end) :]
    else:
        new = (old.rstrip() + "\n\n" if old else "") + block + "\n"
    points.write_text(path, new)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", default="results/glue_small", help="one JSON per finished program")
    p.add_argument(
        "--runs", default="runs/glue_small", help="workdirs (checkpoints, metrics.jsonl)"
    )
    p.add_argument("--out", default="results/glue_small.md", help="the Markdown report")
    p.add_argument(
        "--dry-run",
        "--budget-check",
        action="store_true",
        dest="dry_run",
        help="list the points, which are finished, and the estimated time left",
    )
    p.add_argument("--report", action="store_true", help="rewrite the report, train nothing")
    p.add_argument("--reduced", action="store_true", help="tiny smoke setting (CI)")
    p.add_argument("--max-points", type=int, help="stop after running this many programs")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="PATH=VALUE",
        help="override every point's config (e.g. recipe=paper, model.name=...)",
    )
    args = p.parse_args(argv)
    from morejax.train import compile_cache

    compile_cache.enable()  # the points share programs (seeds, tasks of one shape)
    results, runs, out = (ROOT / args.results, ROOT / args.runs, ROOT / args.out)
    plan = make_plan(args.reduced, args.set)
    points_fn = table_points(plan)
    cmd = " ".join(
        [
            "python experiments/glue_table.py",
            *(["--reduced"] if args.reduced else []),
            *(f"--set {x}" for x in args.set),
        ]
    )

    def report(done: dict) -> list[str]:
        text, missing = markdown(plan, points_fn, done, header_text(plan, args.reduced, cmd))
        write_report(out, text)
        return missing

    if args.dry_run or args.report:
        done = finished(points_fn, results)
        missing = report(done)
        for pt in points_fn.all_points(done):
            state = "done" if pt.name in done else "missing"
            print(f"{pt.name:28s} {state:8s} est. {fmt_time(pt.est_s)}")
        left = sum(pt.est_s for pt in points_fn.all_points(done) if pt.name in missing)
        print(f"[table] {len(missing)} programs missing, est. {fmt_time(left)}; report: {out}")
        return 0
    return run_table(points_fn, runs, results, report, out, args.max_points, "table")


if __name__ == "__main__":
    sys.exit(main())
