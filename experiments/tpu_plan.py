"""The paper configs planned for TPU slices (results/tpu_plan.md), compiled here from shapes.

    python experiments/tpu_plan.py [--part sharding|table|sweeps] [--only TEXT] [--dry-run]
    python experiments/tpu_plan.py --reduced --out /tmp/plan   # CI's smoke run: a tiny LM

Each cell is one `morejax plan` of a config's training step (the command is in the cell),
saved as JSON in results/tpu_plan/ the moment it finishes (atomically); a rerun skips finished
cells, so the script resumes, and the Markdown is rewritten after every cell. A program
compiled before (`tpu_plan/programs/`, by its lowered text: MiLoRA's train step is PiSSA's) is
not compiled again. Parts, in the order they run: `sharding` (the strategies of
`mesh.sharding` compared on two LLaMA-7B configs at v5e-8 and v4-8), `table` (config x
method x slice), `sweeps` (vectorised members per slice). A LLaMA-7B train step takes ~3-11
min to compile on this machine's 2 cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from morejax import points  # noqa: E402

OUT = ROOT / "results" / "tpu_plan"
REPORT = ROOT / "results" / "tpu_plan.md"
SLICES = ("v4-8", "v5e-8", "v5p-8", "v6e-8")
# The order cells run in: v4 compiles last (a LLaMA-7B one held 13 GB of host memory).
RUN_ORDER = ("v5e-8", "v6e-8", "v5p-8", "v4-8")
METHODS = ("more", "lora", "dora", "pissa", "milora")
GiB = 2**30
ATTEMPTS = 2  # a cell whose compile was killed this often is recorded as an error


def adapter(method: str, rank: int, dropout: float) -> list[str]:
    """`--set` for a method at a LoRA rank (MoRe: nb4 at the same rank, as the configs)."""
    return {
        "more": [f"adapter=MoRe(nblocks=4, rank={rank}, dropout={dropout})"],
        "lora": [f"adapter=LoRA(rank={rank}, alpha={2.0 * rank}, dropout={dropout})"],
        "dora": [f"adapter=DoRA(rank={rank}, alpha={2.0 * rank}, dropout={dropout})"],
        "pissa": [f"adapter=PiSSA(rank={rank}, dropout={dropout})"],
        "milora": [f"adapter=MiLoRA(rank={rank}, dropout={dropout})"],
    }[method]


# (row id, what it is, config file, method -> --set values)
ROWS = [
    (
        "roberta-glue",
        "MoRe RoBERTa-large GLUE (SST-2 recipe; others r=8 on q,k,v)",
        "configs/glue_more_roberta_large.py",
        lambda m: [] if m == "more" else adapter(m, 8, 0.0),
    ),
    (
        "llama7b-commonsense",
        "MoRe LLaMA-7B commonsense_170k (nb4 r4 on q,k,v; others r=32 on q,k,v)",
        "configs/commonsense_more_llama7b.py",
        lambda m: [] if m == "more" else adapter(m, 32, 0.05),
    ),
    (
        "llama2-7b-commonsense",
        "MiLoRA LLaMA-2-7B commonsense_170k (r=32 on q,k,v,up,down)",
        "configs/commonsense_smollm2.py",
        lambda m: ["scale=paper", f"method={m}"],
    ),
    (
        "llama2-7b-math",
        "MiLoRA LLaMA-2-7B math_10k (r=64 on q,k,v,up,down)",
        "configs/math_smollm2.py",
        lambda m: ["scale=paper", f"method={m}"],
    ),
    (
        "llama3-8b-commonsense",
        "LLaMA-3-8B commonsense_170k (MiLoRA's recipe, r=32 on q,k,v,up,down)",
        "configs/commonsense_smollm2.py",
        lambda m: ["scale=paper", f"method={m}", "model.name=llama-3-8b"],
    ),
]
# The sharding comparison: (config, --set), slice -> [(mesh, sharding)].
SHARDING_CONFIGS = [
    ("llama7b-commonsense", "configs/commonsense_more_llama7b.py", []),
    ("llama2-7b-math", "configs/math_smollm2.py", ["scale=paper", "method=milora"]),
]
SHARDING_SLICES = {
    "v5e-8": [((1, 8), "largest"), ((1, 8), "megatron"), ((8, 1), "fsdp"), ((8, 1), "largest")],
    "v4-8": [((1, 4), "largest"), ((1, 4), "megatron"), ((4, 1), "fsdp"), ((4, 1), "largest")],
}
# Meshes with both axes, for the first config only (after the others).
MIXED = {"v5e-8": (2, 4), "v4-8": (2, 2)}
SWEEP_ROWS = ("roberta-glue", "llama7b-commonsense")
SWEEP_MEMBERS = (2, 4, 8, 16)


@dataclasses.dataclass
class Cell:
    part: str
    key: str  # file name
    config: str
    sets: list
    topology: str

    @property
    def name(self) -> str:
        return self.key

    def command(self) -> str:
        sets = " ".join(f"--set {shlex.quote(s)}" for s in self.sets)
        return (
            f"morejax plan {self.config} --topology {self.topology} {sets} "
            "--programs train --search 0 --json"
        ).replace("  ", " ")


def cells(part: str) -> list[Cell]:
    out = []
    if part == "sharding":
        for topo, variants in SHARDING_SLICES.items():
            for row, path, sets in SHARDING_CONFIGS:
                for (d, m), sharding in variants:
                    mesh = [f"mesh.data={d}", f"mesh.model={m}", f"mesh.sharding={sharding}"]
                    key = f"sharding-{row}-{topo}-{d}x{m}-{sharding}"
                    out.append(Cell(part, key, path, [*sets, *mesh], topo))
        row, path, sets = SHARDING_CONFIGS[0]
        for topo, (d, m) in MIXED.items():
            for sharding in ("largest", "megatron", "fsdp"):
                mesh = [f"mesh.data={d}", f"mesh.model={m}", f"mesh.sharding={sharding}"]
                key = f"sharding-{row}-{topo}-{d}x{m}-{sharding}"
                out.append(Cell(part, key, path, [*sets, *mesh], topo))
        out.sort(key=lambda c: RUN_ORDER.index(c.topology))
    elif part == "table":
        # A slice at a time, so a partial run answers every config and method on a slice.
        for topo in RUN_ORDER:
            for method in METHODS:
                for row, _, path, sets in ROWS:
                    out.append(Cell(part, f"table-{row}-{method}-{topo}", path, sets(method), topo))
    elif part == "sweeps":
        for topo in RUN_ORDER:
            for row, _, path, sets in ROWS:
                if row not in SWEEP_ROWS:
                    continue
                for n in SWEEP_MEMBERS:
                    seeds = f"vmap_seeds={tuple(range(n))}"
                    key = sweep_key(row, topo, n)
                    out.append(Cell(part, key, path, [*sets("more"), seeds], topo))
    return out


def run_cell(cell: Cell, cache: Path | None = None) -> dict:
    from morejax.train import config, plan

    t0 = time.time()
    exp = config.build(config.load(ROOT / cell.config, cell.sets))
    try:
        p = plan.plan(exp, cell.topology, programs=("train",), search=0, cache=cache)
        result = dataclasses.asdict(p)
    except ValueError as e:  # a setting the slice cannot take (e.g. batch over the mesh)
        result = {"error": str(e)}
    result.update(command=cell.command(), wall_s=round(time.time() - t0, 1))
    return result


def run_isolated(cell: Cell, cache: Path) -> dict | None:
    """`run_cell` in a fresh process: a LLaMA-7B compile leaves 10+ GB behind that the next
    cell must not inherit. None when the process was killed (host memory)."""
    import concurrent.futures
    import multiprocessing

    spawn = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=spawn) as pool:
        try:
            return pool.submit(run_cell, cell, cache).result()
        except concurrent.futures.process.BrokenProcessPool:
            return None


def save(cell: Cell, result: dict) -> None:
    points.write_json(OUT / f"{cell.key}.json", result)


def load(key: str) -> dict | None:
    return points.read_json(OUT / f"{key}.json")


def gib(n) -> str:
    return f"{n / GiB:.1f}"


def step_ms(r: dict) -> str:
    return f"{r['speed']['step_s'] * 1e3:,.0f} ms" if r.get("speed") else "-"


def hours(r: dict) -> str:
    return f"{r['speed']['chip_hours']:,.1f}" if r.get("speed") else "-"


def train_of(r: dict) -> dict:
    return next(p for p in r["programs"] if p["name"] == "train")


def table_cell(r: dict | None) -> str:
    if r is None:
        return "not run"
    if "error" in r:
        return f"error: {r['error'][:60]}"
    t = train_of(r)
    if not r["fits"]:
        return f"no ({gib(t['peak_bytes'])} GiB)"
    return f"yes, {gib(t['peak_bytes'])} GiB, {step_ms(r)}, {hours(r)} chip-h"


def markdown() -> str:
    lines = [
        "# TPU plans of the paper configs",
        "",
        "Made by `python experiments/tpu_plan.py` (resumable; one JSON per cell in",
        "`results/tpu_plan/`, each with the `morejax plan` command that made it). Every step",
        "was compiled on a 2-core CPU machine for the TPU with libtpu (`pip install -e",
        '".[tpu]"`), from shapes alone, and never run on a chip. Memory per chip and',
        "whether it fits are the TPU compiler's; step times (a roofline from peak bf16 FLOP/s",
        "and HBM bandwidth, no communication), tokens/s and chip-hours are **estimated**. Only",
        "the training step is compiled (`--programs train`).",
        "",
    ]
    lines += sharding_section() + table_section() + sweeps_section()
    return "\n".join(lines) + "\n"


def sharding_section() -> list[str]:
    lines = [
        "## Sharding, measured",
        "",
        "Per chip: peak HBM of the training step, the frozen base's share, and the bytes each",
        "collective produces per step in the compiled HLO (a loop body counted once; these",
        "steps have no loop). `largest` on a `data` x 1 mesh is the old default (the base",
        "replicated on every chip).",
        "",
        "| config | slice | mesh data x model | sharding | fits | peak GiB | base GiB | "
        "all-gather GB | all-reduce GB | reduce-scatter GB | permute GB | all-to-all GB | "
        "est. step | compile |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    commands = []
    for cell in cells("sharding"):
        r = load(cell.key)
        mesh, sharding = cell.sets[-3:-1], cell.sets[-1].split("=")[1]
        shape = f"{mesh[0].split('=')[1]} x {mesh[1].split('=')[1]}"
        row = cell.key.split("-v")[0].removeprefix("sharding-")
        if r is None or "error" in r:
            note = "not run" if r is None else f"error: {r['error'][:60]}"
            lines.append(f"| {row} | {cell.topology} | {shape} | {sharding} | {note} |" + " |" * 9)
            continue
        t = train_of(r)
        c = t["collectives"]
        fits = "yes" if r["fits"] else "no"
        base = gib(t["arguments"]["base"]) if t["arguments"] else "-"
        cols = [c.get(k, 0) / 1e9 for k in COLLECTIVES]
        lines.append(
            f"| {row} | {cell.topology} | {shape} | {sharding} | {fits} | {gib(t['peak_bytes'])} "
            f"| {base} | " + " | ".join(f"{x:.2f}" for x in cols) + f" | {step_ms(r)} "
            f"| {t['compile_s']:.0f} s |"
        )
        commands.append(r["command"])
    lines += ["", *commands_block(commands)]
    return lines


COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "collective-permute", "all-to-all")


def commands_block(commands: list[str]) -> list[str]:
    return ["Commands:", "", "```bash", *commands, "```", ""]


def slice_grid(second: str, rows: list[tuple[str, str, list[str]]]) -> tuple[list, list, int]:
    """A table of cells by slice: (Markdown lines, the finished cells' commands, how many are
    not run). `rows`: (what, the second column, one cell key per slice)."""
    lines = [f"| config | {second} | " + " | ".join(SLICES) + " |"]
    lines += ["|---|---|" + "---|" * len(SLICES)]
    commands, missing = [], 0
    for what, col, keys in rows:
        results = [load(k) for k in keys]
        lines.append(f"| {what} | {col} |" + "".join(f" {table_cell(r)} |" for r in results))
        missing += sum(r is None for r in results)
        commands += [r["command"] for r in results if r is not None]
    return lines, commands, missing


def table_section() -> list[str]:
    rows = [
        (what, method, [f"table-{row}-{method}-{topo}" for topo in SLICES])
        for row, what, *_ in ROWS
        for method in METHODS
    ]
    grid, commands, missing = slice_grid("method", rows)
    shared = shared_programs([k for *_, keys in rows for k in keys])
    return [
        "## Config x method x slice",
        "",
        "Each cell: fits or not, peak GiB per chip of the training step, the estimated step",
        "time and the estimated chip-hours of the paper's full recipe (epochs x training",
        "examples / batch; GLUE: SST-2's 67,349, the reasoning mixtures their nominal",
        "170,000 / 10,000). The config's own mesh (data over every chip) and `mesh.sharding`",
        "`auto`.",
        "",
        *grid,
        "",
        f"Cells not run yet: {missing}.",
        "",
        *shared,
        *commands_block(commands),
    ]


def shared_programs(keys: list[str]) -> list[str]:
    """The cells whose train steps lowered to one program (one compile, one measurement)."""
    by_program = {}
    for key in keys:
        r = load(key)
        if r is not None and "error" not in r and train_of(r).get("fingerprint"):
            by_program.setdefault(train_of(r)["fingerprint"], []).append(key)
    groups = [ks for ks in by_program.values() if len(ks) > 1]
    if not groups:
        return []
    return [
        "Cells that lowered to one and the same train step (the same HLO text, slice and",
        "versions), so it was compiled once for them (`fingerprint` in their JSON):",
        "",
        *(f"- {' = '.join(f'`{k}`' for k in ks)}" for ks in groups),
        "",
    ]


def sweeps_section() -> list[str]:
    rows = [
        (
            what,
            str(n),
            [sweep_key(row, topo, n) for topo in SLICES],
        )
        for row, what, *_ in ROWS
        if row in SWEEP_ROWS
        for n in (1, *SWEEP_MEMBERS)
    ]
    grid, commands, _ = slice_grid("members", rows)
    commands = [c for c in commands if "vmap_seeds" in c]  # one member: the table's cell
    return [
        "## Vectorised sweep members on one slice",
        "",
        "`vmap_seeds=(0, ..., n-1)`: n members trained as one program (each with its own",
        "batch). Each cell: the peak GiB per chip of the training step with n members. A",
        "count above one that did not fit is not compiled.",
        "",
        *most_members(),
        "",
        *grid,
        "",
        *commands_block(commands),
    ]


def sweep_key(row: str, topo: str, n: int) -> str:
    """The cell of `n` sweep members (one member: the table's MoRe cell)."""
    return f"table-{row}-more-{topo}" if n == 1 else f"sweeps-{row}-{topo}-{n}"


def most_members() -> list[str]:
    """The sweeps' answer: per config and slice, the most members that fit (of 1, 2, 4, ...;
    `>= n` when the largest count tried fits, `?` until it is known)."""
    counts = (1, *SWEEP_MEMBERS)
    lines = [f"The most members that fit on one slice (of {', '.join(map(str, counts))}):", ""]
    lines += ["| config | " + " | ".join(SLICES) + " |", "|---|" + "---|" * len(SLICES)]
    for row, what, *_ in ROWS:
        if row not in SWEEP_ROWS:
            continue
        answers = []
        for topo in SLICES:
            found = [load(sweep_key(row, topo, n)) for n in counts]
            fits = [None if r is None else bool(r.get("fits")) for r in found]
            answers.append(most_that_fit(counts, fits))
        lines.append(f"| {what} |" + "".join(f" {a} |" for a in answers))
    return lines


def most_that_fit(counts: tuple, fits: list) -> str:
    """`fits[i]`: whether `counts[i]` members fit (None: not compiled yet). Counts above one
    that did not fit are never compiled, so the first refusal settles it."""
    best = 0
    for n, ok in zip(counts, fits):
        if ok is None:
            return "?"
        if not ok:
            return str(best) if best else "none"
        best = n
    return f">= {best}"


def reduce() -> None:
    """The smoke run's grid: a one-layer LM with q and v adapted, four methods (MiLoRA's a
    cache hit), one 4-chip slice, two shardings, two sweep members (seconds per compile)."""
    global ROWS, METHODS, SLICES, RUN_ORDER, SHARDING_CONFIGS, SHARDING_SLICES, MIXED
    global SWEEP_ROWS, SWEEP_MEMBERS
    small = ["targets=.*/(q_proj|v_proj)/kernel", "data.max_len=128"]
    ROWS = [
        (
            "tiny",
            "tiny LM (q, v)",
            "configs/smoke_tiny_lm.py",
            lambda m: [*small, *adapter(m, 4, 0.0)],
        )
    ]
    METHODS, SLICES, RUN_ORDER = ("lora", "more", "pissa", "milora"), ("v4-8",), ("v4-8",)
    SHARDING_CONFIGS = [("tiny", "configs/smoke_tiny_lm.py", small)]
    SHARDING_SLICES = {"v4-8": [((1, 4), "largest"), ((1, 4), "megatron")]}
    MIXED, SWEEP_ROWS, SWEEP_MEMBERS = {}, ("tiny",), (2,)


def main() -> int:
    global OUT, REPORT
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", choices=("sharding", "table", "sweeps"), action="append")
    ap.add_argument("--only", default="", help="cells whose key contains this text")
    ap.add_argument("--dry-run", action="store_true", help="list the cells and their state")
    ap.add_argument("--reduced", action="store_true", help="a tiny model's grid (CI)")
    ap.add_argument("--out", help="write tpu_plan.md and tpu_plan/ here instead of results/")
    args = ap.parse_args()
    if args.reduced:
        reduce()
    if args.out:
        OUT, REPORT = Path(args.out) / "tpu_plan", Path(args.out) / "tpu_plan.md"
    todo = [c for part in args.part or ("sharding", "table", "sweeps") for c in cells(part)]
    todo = [c for c in todo if args.only in c.key]
    if args.dry_run:
        for c in todo:
            state = "done" if load(c.key) else "todo"
            print(f"{state}  {c.key}  {c.command()}")
        return 0
    try:  # when the host runs out of memory, the kernel kills this planner, not a neighbour
        Path("/proc/self/oom_score_adj").write_text("1000")
    except OSError:
        pass

    def work(c: Cell) -> dict | None:
        if c.part == "sweeps" and skipped_by_smaller(c):
            return None
        tries = OUT / f".{c.key}.tries"
        n = int(tries.read_text()) if tries.is_file() else 0
        if n >= ATTEMPTS:  # killed that often mid-compile (host memory): recorded, not retried
            result = {"error": f"killed {n} times while compiling", "command": c.command()}
            save(c, result)
            return result
        OUT.mkdir(parents=True, exist_ok=True)
        tries.write_text(str(n + 1))
        print(f"{c.key}: {c.command()}", flush=True)
        cache = OUT / "programs"
        result = run_cell(c, cache) if args.reduced else run_isolated(c, cache)
        if result is None:
            print(f"  killed while compiling (try {n + 1} of {ATTEMPTS})", flush=True)
            return None  # the next run tries again
        save(c, result)
        tries.unlink(missing_ok=True)
        print(f"  {table_cell(result)} ({result['wall_s']:.0f} s)", flush=True)
        return result

    report = lambda done: points.write_text(REPORT, markdown())
    return points.run(lambda done: todo, load=lambda c: load(c.key), work=work, report=report)


def skipped_by_smaller(cell: Cell) -> bool:
    """A member count above one that did not fit is not compiled."""
    row_topo, n = cell.key.rsplit("-", 1)
    smaller = [m for m in SWEEP_MEMBERS if m < int(n)]
    for m in smaller:
        r = load(f"{row_topo}-{m}")
        if r is not None and not r.get("fits", False):
            return True
    return False


if __name__ == "__main__":
    raise SystemExit(main())
