"""The MoRe paper's CoLA ablations at CPU scale (`configs/more_ablation_cola.py`): MoRe's
number of blocks, rank nb*r and block size against LoRA r = 4, 8, 16, 3 seeds each.

    python experiments/more_ablation.py              # runs what is missing, writes the report
    python experiments/more_ablation.py --dry-run    # the settings, which are done, time left
    python experiments/more_ablation.py --report     # rewrite results/more_ablation.md only

One vectorised program per setting (its seeds as members); each finished program is written
atomically to `results/more_ablation/<setting>.json` and the report is rewritten at once, so
it is valid (with what is missing) whenever the command stops; rerunning skips finished
settings and resumes an interrupted one from its checkpoint in `runs/more_ablation/`. The
figures beside the paper's series: `notebooks/more_ablation.py` (see the report).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from experiments.glue_table import (  # noqa: E402
    EVAL_S,
    METHOD_COST,
    PROGRAM_S,
    STEP_S,
    TINY,
    Point,
    finished,
    fmt_time,
    mean_std,
    run_table,
    write_report,
)
from morejax import points as points_lib  # noqa: E402

CONFIG = ROOT / "configs" / "more_ablation_cola.py"

# The MoRe paper's CoLA series (RoBERTa-large, Matthews corr. x100; params in M, as the
# official hyperparameter notebook counts them, 2^20 units), from ../shared/docs/methods.md.
PAPER = {
    "blocks": {"x": [2, 4, 8, 16, 32], "mcc": [68.1, 69.91, 67.02, 63.91, 63.0]},
    "rank": {
        "x": [4, 8, 16, 32, 64],
        "mcc": [69.8, 68.54, 69.91, 69.51, 69.98],
        "params_m": [0.14, 0.28, 0.56, 1.13, 2.25],
    },
    "lora": {"x": [4, 8, 16], "mcc": [65.05, 68.3, 68.0], "params_m": [0.38, 0.76, 1.52]},
    "block size": {
        "x": [1, 4, 16, 32, 64],
        "mcc": [55.76, 62.39, 68.88, 67.9, 70.29],
        "params_m": [0.14, 0.56, 2.25, 4.5, 9.0],
    },
}
SERIES_X = {"blocks": "nblocks", "rank": "nb*r", "block size": "block size b", "lora": "LoRA r"}


def setting_name(s: dict) -> str:
    if s["method"] == "lora":
        return f"lora-r{s['rank']}"
    return f"more-nb{s['nblocks']}-r{s['rank']}"


def series_x(series: str, s: dict) -> int:
    """The series' x value of a setting (the paper's axis)."""
    return {
        "blocks": s["nblocks"],
        "rank": s["nblocks"] * s["rank"],
        "block size": s["rank"],
        "lora": s["rank"],
    }[series]


def make_points(reduced: bool, text_sets=(), hidden: int = 384) -> list[tuple[dict, Point]]:
    from morejax.train import config

    module = config.load_module(CONFIG)
    settings = module.settings(hidden)
    seeds, extra, steps = module.SEEDS, {}, 300
    if reduced:
        settings = [
            s
            for s in settings
            if (s["method"], s["nblocks"], s["rank"]) in {("more", 2, 4), ("lora", 0, 4)}
        ]
        seeds, extra, steps = (0, 1), dict(TINY), TINY["steps"]
    out = []
    for s in settings:
        args = {"method": s["method"], "rank": s["rank"]}
        if s["method"] == "more":
            args["nblocks"] = s["nblocks"]
        per_member = steps * STEP_S["cola"] * METHOD_COST[s["method"]] + 6 * EVAL_S["cola"]
        point = Point(
            setting_name(s),
            CONFIG,
            {**args, **extra, "vmap_seeds": tuple(seeds)},
            PROGRAM_S + len(seeds) * per_member,
            tuple(text_sets),
        )
        out.append((s, point))
    return out


def rows(pairs: list[tuple[dict, Point]], done: dict) -> list[dict]:
    """One row per (series, setting) with its finished scores (None while missing)."""
    out = []
    for s, p in pairs:
        rec = done.get(p.name)
        for series in s["series"]:
            row = {"series": series, "x": series_x(series, s), "setting": p.name, "rec": rec}
            if rec:
                mean, std = mean_std([m["best"] for m in rec["members"]])
                row.update(mean=mean, std=std, params=rec["adapter_params"], wall=rec["wall_s"])
            out.append(row)
    return out


# Two-sided 5% critical values of Student's t by degrees of freedom (standard tables).
T_975 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 10: 2.23}


def welch(a: list[float], b: list[float]) -> tuple[float, float]:
    """Welch's t of mean(a) - mean(b) and its Welch-Satterthwaite degrees of freedom."""
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    t = (np.mean(a) - np.mean(b)) / np.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return float(t), float(df)


def neighbours(table: list[dict], series: str) -> list[str]:
    """Each step along a series, from the unrounded seed scores: the difference, whether the
    seed ranges overlap, and whether Welch's t resolves it at 5%."""
    done = sorted((r for r in table if r["series"] == series and r["rec"]), key=lambda r: r["x"])
    out = []
    for a, b in zip(done, done[1:]):
        sa = [100 * m["best"] for m in a["rec"]["members"]]
        sb = [100 * m["best"] for m in b["rec"]["members"]]
        if min(len(sa), len(sb)) < 2:
            continue
        t, df = welch(sa, sb)
        crit = T_975[max(k for k in T_975 if k <= max(1, int(df)))]
        overlap = min(max(sa), max(sb)) >= max(min(sa), min(sb))
        verdict = (
            "resolved" if abs(t) > crit else f"not resolved with {min(len(sa), len(sb))} seeds"
        )
        out.append(
            f"- {series} {a['x']} -> {b['x']}: {np.mean(sb) - np.mean(sa):+.2f} (seeds "
            f"{min(sa):.1f}-{max(sa):.1f} vs {min(sb):.1f}-{max(sb):.1f}, ranges "
            f"{'overlap' if overlap else 'do not overlap'}); Welch t = {abs(t):.2f} on {df:.1f} "
            f"df, 5% critical {crit:.2f}: {verdict}."
        )
    if out:
        out.insert(0, f"Steps along the {series} series (MCC x100, unrounded):")
    return out


def markdown(pairs, done: dict, cmd: str, reduced: bool) -> tuple[str, list[str]]:
    m = points_lib.machine()
    missing = [p for _, p in pairs if p.name not in done]
    lines = [
        "## Results ("
        + ("REDUCED smoke setting, tiny random model" if reduced else "CPU setting")
        + ")",
        "",
        f"Regenerate: `{cmd}` (resumable; `--dry-run` lists settings and time left). Machine of "
        f"this write: {m['platform']}, {m['cpu_count']} CPUs. CoLA dev Matthews correlation "
        "x100, best checkpoint per seed, mean ± std over the seeds; the paper's value "
        "(RoBERTa-large) beside it.",
        "",
        "| series | x | setting | trainable params | MCC here | paper MCC | paper params | wall |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows(pairs, done):
        paper = PAPER.get(r["series"], {})
        try:
            i = paper["x"].index(r["x"])
        except (KeyError, ValueError):
            i = None
        pm = f"{paper['mcc'][i]:.2f}" if i is not None else ""
        pp = f"{paper['params_m'][i]:g} M" if i is not None and "params_m" in paper else ""
        if r["rec"]:
            here = f"{100 * r['mean']:.1f} ± {100 * r['std']:.1f}"
            params, wall = f"{r['params']:,}", fmt_time(r["wall"])
        else:
            here, params, wall = "missing", "", ""
        lines.append(
            f"| {r['series']} | {r['x']} | {r['setting']} | {params} | {here} | {pm} | {pp} | "
            f"{wall} |"
        )
    lines += ["", *neighbours(rows(pairs, done), "blocks"), ""]
    if missing:
        left = sum(p.est_s for p in missing)
        lines.append(
            f"**Missing ({len(missing)} programs, est. {fmt_time(left)}):** "
            + ", ".join(p.name for p in missing)
            + ". Rerun the command to finish them."
        )
    else:
        lines.append("All settings finished.")
    return "\n".join(lines) + "\n", [p.name for p in missing]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", default="results/more_ablation")
    p.add_argument("--runs", default="runs/more_ablation")
    p.add_argument("--out", default="results/more_ablation.md")
    p.add_argument("--dry-run", "--budget-check", action="store_true", dest="dry_run")
    p.add_argument("--report", action="store_true", help="rewrite the report, train nothing")
    p.add_argument("--reduced", action="store_true", help="tiny smoke setting (CI)")
    p.add_argument("--max-points", type=int)
    p.add_argument("--hidden", type=int, default=384, help="model width (block-size series)")
    p.add_argument("--set", action="append", default=[], metavar="PATH=VALUE")
    args = p.parse_args(argv)
    from morejax.train import compile_cache

    compile_cache.enable()  # the points share programs (seeds, tasks of one shape)
    results, runs, out = ROOT / args.results, ROOT / args.runs, ROOT / args.out
    pairs = make_points(args.reduced, args.set, args.hidden)
    cmd = " ".join(
        [
            "python experiments/more_ablation.py",
            *(["--reduced"] if args.reduced else []),
            *(f"--set {x}" for x in args.set),
        ]
    )

    def points(done):
        return [pt for _, pt in pairs]

    def report(done: dict) -> list[str]:
        text, missing = markdown(pairs, done, cmd, args.reduced)
        write_report(out, text)
        return missing

    if args.dry_run or args.report:
        done = finished(points, results)
        missing = report(done)
        for _, pt in pairs:
            state = "done" if pt.name in done else "missing"
            print(f"{pt.name:20s} {state:8s} est. {fmt_time(pt.est_s)}")
        left = sum(pt.est_s for _, pt in pairs if pt.name in missing)
        print(f"[ablation] {len(missing)} programs missing, est. {fmt_time(left)}; report: {out}")
        return 0
    return run_table(points, runs, results, report, out, args.max_points, "ablation")


if __name__ == "__main__":
    sys.exit(main())
