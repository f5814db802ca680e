"""The `train`, `eval`, `params` and `sweep` subcommands.

`register(subparsers)` adds them to an argparse parser (morejax.cli); `main(argv)` runs
them on their own: `python -m morejax.commands train configs/glue_more_minilm.py`.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import sys
import traceback
from pathlib import Path

from morejax import config

VECTORISABLE = ("seed", "optimizer.learning_rate")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="experiment file (configs/*.py) defining config()")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="PATH=VALUE",
        help="override a nested value, e.g. --set adapter.rank=8 (values are Python literals)",
    )


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="fine-tune with a config file (resumes a workdir)")
    _common(p)
    p.add_argument("--workdir", help="run directory (default runs/<config name>)")
    p.add_argument("--stop-at", type=int, help="stop after this step with a checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--allow-config-change",
        action="store_true",
        help="resume a workdir whose checkpoint was made with other config values",
    )
    p.set_defaults(func=cmd_train)

    p = subparsers.add_parser("eval", help="evaluate a run's best or latest checkpoint")
    _common(p)
    p.add_argument("--workdir", required=True)
    p.add_argument("--checkpoint", default="best", help="best | latest | STEP")
    p.set_defaults(func=cmd_eval)

    p = subparsers.add_parser("params", help="adapted-parameter table from shapes alone")
    _common(p)
    p.add_argument("--totals", action="store_true", help="print the totals only")
    p.set_defaults(func=cmd_params)

    p = subparsers.add_parser("sweep", help="run every point of the config's sweep()")
    _common(p)
    p.add_argument("--workdir", help="sweep directory (default runs/<config name>-sweep)")
    p.add_argument(
        "--vectorize",
        action="store_true",
        help="train points that differ only in seed / learning rate in one vmapped program",
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_sweep)


def _load(args, extra: dict | None = None):
    return config.load(args.config, args.set, extra)


def _default_workdir(args, suffix: str = "") -> Path:
    return Path("runs") / (Path(args.config).stem + suffix)


# ----------------------------------------------------------------------------- train / eval


def run_one(cfg, workdir: Path, *, stop_at=None, progress=True, allow_config_change=False):
    """Print and write the resolved config, then train (resuming when the workdir has a run)."""
    from morejax import train

    config.resolve(cfg)
    print("resolved config:\n" + config.to_text(cfg), flush=True)
    exp = config.build(cfg)
    config.write_resolved(cfg, workdir)
    return train.train(
        exp,
        workdir,
        resolved=config.to_json(cfg),
        stop_at=stop_at,
        progress=progress,
        allow_config_change=allow_config_change,
    )


def cmd_train(args) -> int:
    cfg = _load(args)
    workdir = Path(args.workdir) if args.workdir else _default_workdir(args)
    out = run_one(
        cfg,
        workdir,
        stop_at=args.stop_at,
        progress=not args.no_progress,
        allow_config_change=args.allow_config_change,
    )
    final = out["final"]
    if isinstance(final, dict):
        shown = ", ".join(f"{k} {v:.4f}" for k, v in final.items())
        print(f"dev at step {out['step']}: {shown}")
    elif final:
        print(f"dev at step {out['step']}, per member: {final}")
    if out["best"] is not None:
        print(f"best dev {out['metric']} {out['best']:.4f} at step {out['best_step']} (kept)")
    print(f"adapter checkpoint: {out['checkpoint'] or '(none yet)'}; workdir {workdir}")
    print(f"wall time {out['wall_s']:.0f} s, {out['step']} / {out['steps']} steps")
    return 0


def cmd_eval(args) -> int:
    from morejax import train

    cfg = _load(args)
    exp = config.build(cfg)
    out = train.evaluate_checkpoint(exp, args.workdir, args.checkpoint)
    print(f"checkpoint {out['checkpoint']} (step {out['step']})")
    for i, r in enumerate(out["results"]):
        label = f"member {i}: " if len(out["results"]) > 1 else ""
        print(label + ", ".join(f"{k} {v:.4f}" for k, v in r.items()))
    print(json.dumps(out["results"]))
    return 0


def cmd_params(args) -> int:
    from morejax import train

    exp = config.build(_load(args))
    summary = train.param_summary(exp)
    if not args.totals:
        print(summary.table())
    else:
        print(f"adapter params: {summary.adapter_params:,}")
        print(f"other trainable: {summary.other_trainable:,}")
        print(f"model params: {summary.model_params:,}")
    return 0


# ----------------------------------------------------------------------------- sweeps


def _groups(points: list[dict], vectorize: bool) -> list[tuple[dict, list[dict]]]:
    """(shared overrides, points) per program: points differing only in seed/lr share one."""
    if not vectorize:
        return [(p, [p]) for p in points]
    groups: dict[str, tuple[dict, list[dict]]] = {}
    for p in points:
        rest = {k: v for k, v in p.items() if k not in VECTORISABLE}
        key = repr(sorted((k, repr(v)) for k, v in rest.items()))
        groups.setdefault(key, (rest, []))[1].append(p)
    return list(groups.values())


def _row(point: dict, out: dict | None, member: int | None, error: str | None) -> dict:
    row = {"point": config.point_name(point), **{k: point[k] for k in point}}
    if error:
        return {**row, "status": "failed", "error": error}
    final = out.get("final")
    if member is not None:
        best = out["best_members"][member]
        final = final[member] if final else None
        row.update(best=best["value"], best_step=best["step"])
    else:
        row.update(best=out.get("best"), best_step=out.get("best_step"))
    row.update(final=final.get(out["metric"]) if final else None, metric=out["metric"])
    row.update(status="done", wall_s=out.get("wall_s"), workdir=out.get("workdir"))
    return row


def config_key(cfg) -> str:
    """A short hash of the resolved config: a sweep point's results belong to exactly it."""
    text = json.dumps(config.to_json(config.resolve(cfg)), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def _point_config(args, shared: dict, group: list[dict], vector: bool):
    """(config, folder name) of one program of a sweep."""
    if not vector:
        cfg = _load(args, group[0])
        return cfg, f"{config.point_name(group[0])}-{config_key(cfg)}"
    cfg = _load(args, shared)
    base_seed = config.get_path(cfg, "seed")
    base_lr = config.get_path(cfg, "optimizer.learning_rate")
    vmap = {
        "vmap_seeds": tuple(p.get("seed", base_seed) for p in group),
        "vmap_learning_rates": tuple(p.get("optimizer.learning_rate", base_lr) for p in group),
    }
    config.apply_overrides(cfg, vmap)
    return cfg, f"vmap-{config.point_name(shared)}-{config_key(cfg)}"


def cmd_sweep(args) -> int:
    root = Path(args.workdir) if args.workdir else _default_workdir(args, "-sweep")
    points = config.sweep_points(args.config)
    rows, failed = [], 0
    for shared, group in _groups(points, args.vectorize):
        vector = args.vectorize and (len(group) > 1 or any(k in group[0] for k in VECTORISABLE))
        try:
            cfg, name = _point_config(args, shared, group, vector)
            workdir = root / name
            done = workdir / "results.json"
            if done.is_file():
                print(f"[sweep] {name}: finished before with this exact config, skipped")
                out = json.loads(done.read_text())
            else:
                print(f"[sweep] {name}: running", flush=True)
                out = run_one(cfg, workdir, progress=not args.no_progress)
            for i, p in enumerate(group):
                rows.append(_row(p, out, i if vector else None, None))
        except Exception as e:  # one failing point does not stop the sweep
            traceback.print_exc()
            failed += 1
            for p in group:
                rows.append(_row(p, None, None, f"{type(e).__name__}: {e}"))
    write_table(rows, root)
    print(markdown(rows))
    print(f"[sweep] {len(rows)} points, {failed} failed; table in {root}/results.csv and .md")
    return 1 if failed else 0


def write_table(rows: list[dict], root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    cols = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    with open(root / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    (root / "results.md").write_text(markdown(rows) + "\n")


def markdown(rows: list[dict]) -> str:
    cols = []
    for r in rows:
        cols += [k for k in r if k not in cols and k not in ("workdir", "error")]

    def cell(v):
        return f"{v:.4f}" if isinstance(v, float) else ("" if v is None else str(v))

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- entry point


def main(argv=None) -> int:
    from morejax.cli import run

    parser = argparse.ArgumentParser(prog="morejax", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return run(args, args.debug)


if __name__ == "__main__":
    sys.exit(main())
