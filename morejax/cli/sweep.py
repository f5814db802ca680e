"""`morejax sweep`: every point of a config's `sweep()`, one table of results.

Points are keyed on their resolved config, so a finished point is reused only for exactly
that config; `--vectorize` trains points that differ only in seed / learning rate as
members of one compiled program. A crashed point leaves `failed.json` in its folder and the
sweep goes on, so a rerun retries only the failed and missing points. `--shard K/N` runs
one of N disjoint round-robin slices (a job array, a fleet of machines) into the same root;
`--collect` then builds the one table from the point folders without training.
"""

from __future__ import annotations

import csv
import io
import traceback
from pathlib import Path

from morejax import points
from morejax.cli.train import common_arguments, default_workdir, load, run_one
from morejax.train import config

VECTORISABLE = ("seed", "optimizer.learning_rate")
FAILED = "failed.json"  # in a point's folder: its error, until a rerun finishes it


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "sweep",
        help="run every point of the config's sweep() (or one --shard), or --collect the table",
        description="Run every point of the config's sweep() in <workdir>/<point>-<config hash>; "
        "finished points are skipped, crashed ones are recorded as failed and retried by the "
        "next run. Exit code 1 when a point failed (or, with --collect, is missing).",
    )
    common_arguments(p)
    p.add_argument("--workdir", help="sweep directory (default runs/<config file stem>-sweep)")
    p.add_argument(
        "--vectorize",
        action="store_true",
        help="train points that differ only in seed / learning rate in one vmapped program",
    )
    p.add_argument(
        "--shard",
        metavar="K/N",
        help="run only the K-th of N disjoint slices of the points (K = 1..N, round-robin by "
        "point order; groups, not points, with --vectorize); writes results-shard-K-of-N.csv/.md",
    )
    p.add_argument(
        "--collect",
        action="store_true",
        help="train nothing: gather the finished points of all shards into results.csv/.md, "
        "list missing and failed ones (pass the same --set / --vectorize as the runs)",
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_sweep)


def parse_shard(text: str) -> tuple[int, int]:
    """`K/N` -> (K, N), K counted from 1 like most job arrays; anything else is a clear error."""
    parts = text.strip().split("/")
    try:
        k, n = (int(x) for x in parts)
    except ValueError:
        raise ValueError(
            f"--shard {text!r} is not K/N: give the slice and the slice count as whole "
            "numbers, e.g. --shard 2/4"
        ) from None
    if n < 1 or not 1 <= k <= n:
        raise ValueError(
            f"--shard {text!r} is out of range: shards count from 1, so K must be in 1..N "
            f"and N at least 1 (e.g. --shard 1/{max(n, 1)} .. {max(n, 1)}/{max(n, 1)})"
        )
    return k, n


def shard_slice(items: list, k: int, n: int) -> list:
    """The K-th (1-based) of N round-robin slices: disjoint, covering, fixed by the order."""
    return items[k - 1 :: n]


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


def _row(point: dict, out: dict | None, member: int | None, status: str, error: str = "") -> dict:
    row = {"point": config.point_name(point), **{k: point[k] for k in point}}
    if status != "done":
        return {**row, "status": status, "error": error}
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
    return points.key(config.without_neutral(config.to_json(config.resolve(cfg))))


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


def _is_vector(args, group: list[dict]) -> bool:
    return args.vectorize and (len(group) > 1 or any(k in group[0] for k in VECTORISABLE))


def _one_line(e: BaseException) -> str:
    return " ".join(f"{type(e).__name__}: {e}".split())


def cmd_sweep(args) -> int:
    shard = parse_shard(args.shard) if args.shard else None
    if shard and args.collect:
        raise ValueError("--collect gathers every shard: drop --shard (or run the shard first)")
    root = Path(args.workdir) if args.workdir else default_workdir(args, "-sweep")
    groups = _groups(config.sweep_points(args.config), args.vectorize)
    if args.collect:
        return collect(args, root, groups)
    stem, what = "results", "points"
    if shard:
        k, n = shard
        groups = shard_slice(groups, k, n)
        stem, what = f"results-shard-{k}-of-{n}", f"points of shard {k}/{n}"
        if not groups:
            print(f"[sweep] shard {k}/{n} has no points (the sweep has fewer than {n} programs)")
    runs = [Program(args, root, shared, group) for shared, group in groups]

    def work(program: Program) -> dict:
        if program.error is not None:
            raise program.error
        print(f"[sweep] {program.name}: running", flush=True)
        out = run_one(program.cfg, program.workdir, progress=not args.no_progress)
        (program.workdir / FAILED).unlink(missing_ok=True)
        return out

    def failed(program: Program, e: Exception) -> None:
        """Recorded in the point's folder, so --collect can tell failed from not yet run."""
        traceback.print_exc()
        if program.workdir is not None:
            record = {"error": _one_line(e), "traceback": traceback.format_exc()}
            points.write_json(program.workdir / FAILED, record)

    for program in runs:
        if program.load() is not None:
            print(f"[sweep] {program.name}: finished before with this exact config, skipped")
    code = points.run(lambda done: runs, load=Program.load, work=work, failed=failed)
    if code not in (0, 1):  # preempted: the whole job is being stopped, not a failed point
        publish(rows_of(runs), root, stem)
        return code
    rows = rows_of(runs)
    if rows:
        print(markdown(rows))
    n_failed = sum(r["status"] != "done" for r in rows)
    if publish(rows, root, stem):
        print(f"[sweep] {len(rows)} {what}, {n_failed} failed; table in {root}/{stem}.csv and .md")
    if n_failed:
        print("[sweep] rerun the same command to retry the failed points (finished ones are kept)")
    return 1 if n_failed else 0


class Program:
    """One compiled program of a sweep: a point, or the points vectorised into one."""

    def __init__(self, args, root: Path, shared: dict, group: list[dict]):
        self.group, self.vector = group, _is_vector(args, group)
        self.cfg = self.workdir = self.error = None
        try:
            self.cfg, self.name = _point_config(args, shared, group, self.vector)
            self.workdir = root / self.name
        except Exception as e:  # the runner records this program as failed
            self.error, self.name = e, config.point_name(group[0])

    def load(self) -> dict | None:
        if self.workdir is None:
            return None
        return points.read_json(self.workdir / "results.json")

    def rows(self) -> list[dict]:
        """The table's rows of this program's points: done, failed, or missing."""
        out = self.load()
        if out is not None:
            return [
                _row(p, out, i if self.vector else None, "done") for i, p in enumerate(self.group)
            ]
        if self.error is not None:
            return [_row(p, None, None, "failed", _one_line(self.error)) for p in self.group]
        failure = points.read_json(self.workdir / FAILED)
        if failure is not None:
            return [_row(p, None, None, "failed", failure.get("error", "")) for p in self.group]
        note = "started, not finished (running or stopped)" if self.workdir.is_dir() else ""
        return [_row(p, None, None, "missing", note) for p in self.group]


def rows_of(runs: list[Program]) -> list[dict]:
    return [row for program in runs for row in program.rows()]


def collect(args, root: Path, groups: list[tuple[dict, list[dict]]]) -> int:
    """The one table of the current config's points from their folders; trains nothing.

    A table with more finished points than this collection is kept (a collection with
    other `--set` values than the runs finds none of them), and finished points of other
    configs are counted with the fields they differ in.
    """
    runs = [Program(args, root, shared, group) for shared, group in groups]
    rows = rows_of(runs)
    expected = {p.name: config.to_json(p.cfg) for p in runs if p.cfg is not None}
    print(markdown(rows))
    bad = {s: [r["point"] for r in rows if r["status"] == s] for s in ("missing", "failed")}
    done = len(rows) - len(bad["missing"]) - len(bad["failed"])
    if publish(rows, root):
        print(f"[sweep] collected {done} of {len(rows)} points into {root}/results.csv and .md")
    other, differ = finished_elsewhere(root, expected)
    if other:
        print(
            f"[sweep] {other} finished points in {root} were made with another config"
            + (f" (the runs' value -> this one's: {differ})" if differ else "")
            + "; collect with the same --set as the runs"
        )
    for status, names in bad.items():
        if names:
            print(f"[sweep] {len(names)} {status}: {', '.join(names)}")
    if bad["missing"] and not done and _other_layout(root, args.vectorize):
        other = "with" if not args.vectorize else "without"
        print(f"[sweep] {root} holds runs made {other} --vectorize: collect with the same flags")
    if bad["missing"] or bad["failed"]:
        print("[sweep] run the sweep (or its missing shards) again to finish them")
        return 1
    return 0


def publish(rows: list[dict], root: Path, stem: str = "results") -> bool:
    """Write the table unless the one there lists more finished points (a sweep or collection
    with other `--set` values, or one stopped early, must not replace a better table)."""
    done = sum(r["status"] == "done" for r in rows)
    kept = finished_in_table(root / f"{stem}.csv")
    if kept > done:
        print(
            f"[sweep] {done} of {len(rows)} points finished; kept {root}/{stem}.csv and .md, "
            f"which hold {kept} finished points"
        )
        return False
    write_table(rows, root, stem)
    return True


def finished_in_table(path: Path) -> int:
    """How many points a results table lists as done (0 when there is none)."""
    if not path.is_file():
        return 0
    with open(path, newline="") as f:
        return sum(row.get("status") == "done" for row in csv.DictReader(f))


def finished_elsewhere(root: Path, expected: dict[str, dict]) -> tuple[int, str]:
    """Finished point folders under `root` that are not this config's `expected` ones, and
    the fields their saved configs differ in from the same point here (`theirs -> here`)."""
    if not root.is_dir():
        return 0, ""
    by_point = {name.rsplit("-", 1)[0]: flat for name, flat in expected.items()}
    count, fields = 0, []
    for d in sorted(root.iterdir()):
        if d.name in expected or not (d / "results.json").is_file():
            continue
        count += 1
        theirs, here = config.saved(d), by_point.get(d.name.rsplit("-", 1)[0])
        if theirs and here:
            fields += config.changed_fields(theirs, here, ignore=())
    fields = list(dict.fromkeys(fields))
    return count, ", ".join(fields[:8]) + (f" (+{len(fields) - 8} more)" if len(fields) > 8 else "")


def _other_layout(root: Path, vectorize: bool) -> bool:
    """Whether the sweep root holds folders of the other layout (vectorised or not)."""
    if not root.is_dir():
        return False
    return any(d.is_dir() and d.name.startswith("vmap-") != vectorize for d in root.iterdir())


def write_table(rows: list[dict], root: Path, stem: str = "results") -> None:
    """`stem`.csv and .md, each replaced whole: an interrupted write leaves the old table."""
    root.mkdir(parents=True, exist_ok=True)
    cols = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    text = io.StringIO()
    w = csv.DictWriter(text, fieldnames=cols)
    w.writeheader()
    w.writerows(rows)
    points.write_text(root / f"{stem}.csv", text.getvalue())
    points.write_text(root / f"{stem}.md", markdown(rows) + "\n")


def markdown(rows: list[dict]) -> str:
    if not rows:
        return "(no points)"
    cols = []
    for r in rows:
        cols += [k for k in r if k not in cols and k != "workdir"]

    def cell(v, col):
        if isinstance(v, float):
            text = f"{v:.1f}" if col.endswith("_s") else f"{v:.4f}"  # seconds vs scores
        else:
            text = "" if v is None else str(v)
        text = " ".join(text.split())  # one table line per point, whatever the error says
        text = text if len(text) <= 200 else text[:199] + "…"
        return text.replace("|", "\\|")

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(r.get(c), c) for c in cols) + " |" for r in rows]
    return "\n".join(lines)
