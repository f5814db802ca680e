"""`morejax sweep`: every point of a config's `sweep()`, one table of results.

Points are keyed on their resolved config, so a finished point is reused only for exactly
that config; `--vectorize` trains points that differ only in seed / learning rate as
members of one compiled program.
"""

from __future__ import annotations

import csv
import hashlib
import json
import traceback
from pathlib import Path

from morejax.cli.train import common_arguments, default_workdir, load, run_one
from morejax.train import config

VECTORISABLE = ("seed", "optimizer.learning_rate")


def register(subparsers) -> None:
    p = subparsers.add_parser("sweep", help="run every point of the config's sweep()")
    common_arguments(p)
    p.add_argument("--workdir", help="sweep directory (default runs/<config name>-sweep)")
    p.add_argument(
        "--vectorize",
        action="store_true",
        help="train points that differ only in seed / learning rate in one vmapped program",
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_sweep)


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
        cfg = load(args, group[0])
        return cfg, f"{config.point_name(group[0])}-{config_key(cfg)}"
    cfg = load(args, shared)
    base_seed = config.get_path(cfg, "seed")
    base_lr = config.get_path(cfg, "optimizer.learning_rate")
    vmap = {
        "vmap_seeds": tuple(p.get("seed", base_seed) for p in group),
        "vmap_learning_rates": tuple(p.get("optimizer.learning_rate", base_lr) for p in group),
    }
    config.apply_overrides(cfg, vmap)
    return cfg, f"vmap-{config.point_name(shared)}-{config_key(cfg)}"


def cmd_sweep(args) -> int:
    root = Path(args.workdir) if args.workdir else default_workdir(args, "-sweep")
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
