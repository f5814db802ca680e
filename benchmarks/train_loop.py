"""Where a training run's time goes: the input pipeline, the compiled step alone on batches
already on the device, and `morejax train`'s loop around it, measured in one run.

    python benchmarks/train_loop.py                     # the main job, 200 steps
    python benchmarks/train_loop.py --steps 3 --set data.train_limit=128 --no-record  # smoke

If the loop's real tokens/s is close to the step's on prefetched batches, the loop (data,
logging, checks) costs nothing and only a cheaper step raises throughput; the per-row-count
times show how the step grows with the packed rows it is given.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402

from benchmarks import write_section  # noqa: E402
from morejax.data import pipeline  # noqa: E402
from morejax.train import compile_cache, config  # noqa: E402
from morejax.train import loop as train_loop  # noqa: E402
from morejax.train import setup as setup_lib  # noqa: E402
from morejax.train.mesh import to_global  # noqa: E402
from morejax.train.step import batch_spec  # noqa: E402

MAIN_JOB = ROOT / "configs" / "glue_more_minilm.py"


def loop_tokens_per_s(exp, workdir: Path, adapted) -> float:
    """Median real tokens/s over the loop's logged windows, the first (compiling) left out."""
    train_loop.train(exp, workdir, progress=False, adapted=adapted)
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    rates = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r]
    return statistics.median(rates[1:] or rates)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=str(MAIN_JOB))
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--repeats", type=int, default=15, help="timed steps per row count")
    p.add_argument("--set", action="append", default=[], metavar="PATH=VALUE")
    p.add_argument("--no-record", action="store_true", help="print only (no results/ update)")
    args = p.parse_args(argv)
    compile_cache.enable()  # as `morejax train` does: the bare step then loads the loop's programs
    log_every = max(args.steps // 10, 1)
    # Training only: the loop still evaluates once, at its last step, on 8 dev examples.
    cfg = config.load(args.config, [*args.set, f"steps={args.steps}", "eval_every=0",
                                    f"log_every={log_every}", "checkpoint_every=0",
                                    "data.eval_limit=8"])  # fmt: skip
    exp = config.build(cfg)

    with tempfile.TemporaryDirectory() as tmp:
        adapted = setup_lib.load_adapted(exp)  # the model is read once, for both runs
        loop_rate = loop_tokens_per_s(exp, Path(tmp) / "run", adapted)
        # That run's steps donated its adapters: the bare run draws its own.
        s = setup_lib.setup(exp, setup_lib.load_adapted(exp, adapted.loaded))
        stream, steps = train_loop.training_data(exp, s)
        run = train_loop.start_run(exp, s, steps, Path(tmp) / "bare", {})
        run.ckpt.close()  # the bare run saves nothing; its writers close before tmp goes
        run.logger.close()
    start = time.perf_counter()
    local = [next(stream) for _ in range(args.steps)]
    data_ms = (time.perf_counter() - start) / args.steps * 1e3
    tokens = sum(pipeline.count_tokens(b) for b in local)
    slots = sum(b["input_ids"].size for b in local)
    spec = batch_spec(s.n_members)
    batches = [to_global(s.mesh, train_loop.split_micro(exp, s, b), spec) for b in local]

    state, by_rows = run.state, {}
    for b in batches:  # compile every shape before timing
        rows = b["input_ids"].shape[-2]
        if rows not in by_rows:
            by_rows[rows] = b
            state, _ = run.train_step(state, run.keys, s.base, b)
    jax.block_until_ready(state)
    start = time.perf_counter()
    for b in batches:
        state, _ = run.train_step(state, run.keys, s.base, b)
    jax.block_until_ready(state)
    step_s = (time.perf_counter() - start) / len(batches)
    per_rows = {r: [] for r in sorted(by_rows)}
    for _ in range(args.repeats):  # interleaved, so drifting load hits every row count alike
        for r in per_rows:
            start = time.perf_counter()
            state, _ = run.train_step(state, run.keys, s.base, by_rows[r])
            jax.block_until_ready(state)
            per_rows[r].append(time.perf_counter() - start)
    step_rate = tokens / len(batches) / step_s

    length = local[0]["input_ids"].shape[-1]
    lines = [
        f"`{Path(args.config).name}`, {args.steps} steps"
        + (f" ({', '.join(args.set)})" if args.set else "")
        + f": {tokens / len(local):.0f} real tokens per batch in rows of {length}, "
        f"{tokens / slots:.0%} of the row slots used.",
        "",
        "| measure | ms per step | real tokens/s |",
        "|---|---|---|",
        f"| input pipeline alone (next batch on the host) | {data_ms:.1f} | "
        f"{tokens / len(local) / data_ms * 1e3:.0f} |",
        f"| compiled step alone, batches already on the device | {step_s * 1e3:.1f} | "
        f"{step_rate:.0f} |",
        f"| `morejax train` loop (median logged window) | "
        f"{tokens / len(local) / loop_rate * 1e3:.1f} | {loop_rate:.0f} |",
        "",
        f"Loop / step alone: {loop_rate / step_rate:.2f}x the tokens/s.",
        "",
        f"Step time by packed rows (median of {args.repeats}, interleaved):",
        "",
        "| rows | steps with it | ms per step | ms per row |",
        "|---|---|---|---|",
    ]
    for r, ts in per_rows.items():
        n = sum(1 for b in local if b["input_ids"].shape[-2] == r)
        ms = statistics.median(ts) * 1e3
        lines.append(f"| {r} | {n} | {ms:.1f} | {ms / r:.1f} |")
    text = "\n".join(lines)
    print(text)
    if not args.no_record:
        print(f"wrote {write_section('Training loop against its step', text)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
