"""The MiLoRA paper's tables at small scale (SmolLM2-135M), one command per table, resumable.

    python experiments/reasoning_tables.py --table commonsense   # -> results/commonsense_small.md
    python experiments/reasoning_tables.py --table math          # -> results/math_small.md
    python experiments/reasoning_tables.py --table forgetting    # -> results/forgetting_small.md
    python experiments/reasoning_tables.py --table math --dry-run   # the points, estimated times
    python experiments/reasoning_tables.py --measure             # time training and decoding here

A table is a list of points, each kept as an atomic JSON under results/<table>_small/ once it
finishes (and committed with `--commit`); rerunning skips finished points, resumes a
half-trained run from its checkpoint (runs/reasoning_tables/), and rewrites the Markdown
after every point with what is still missing. Points:
- `train/<method>`: the config (configs/<table>_smollm2.py) at each learning rate of the
  grid, as the members of one vectorised program (`vmap_learning_rates`: one model load and
  one compile per method); keeps each member's loss on the held-out validation slice
  (never a test set).
- `test/<method>`: the learning rate with the lowest validation loss, its adapters merged and
  scored on a fixed random subset of each test set (greedy, KV cache, stops at EOS), and the
  principal angles between each adapted matrix's pretrained and fine-tuned top-k singular
  subspaces (morejax.subspace).
- `test/base`: the untuned model on the same subsets.
- forgetting: `forget/<table>/<method>` scores a trained model on sets it never saw (piqa,
  social_i_qa, winogrande, and the other table's sets); `forget/base` the untuned model.
`--reduced` (the CI smoke run) swaps in a tiny random LLaMA with SmolLM2's tokenizer, two
methods, one learning rate, two steps and two records per set.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from experiments.reasoning_plan import (  # noqa: E402
    DEFAULT_TIMING,
    METHODS,
    SUBSPACE_K,
    Plan,
    best_lr,
    calibration,
    estimate_s,
    forget_points,
    has_checkpoint,
    kind,
    load_exp,
    make_plan,
    point,
    point_path,
    table_points,
    test_records,
)
from experiments.reasoning_report import write_forget_md, write_table_md  # noqa: E402
from morejax import points  # noqa: E402


def weights_digest(params) -> str:
    """sha256 of every leaf (sorted paths, float32 bytes): the same tensors for every method."""
    from morejax import paths

    h = hashlib.sha256()
    for path, leaf in sorted(paths.flatten(params).items()):
        h.update(path.encode())
        h.update(np.ascontiguousarray(np.asarray(leaf, np.float32)).tobytes())
    return h.hexdigest()[:16]


def prepare_reduced(plan: Plan) -> None:
    """SmolLM2's tokenizer as tokenizer.json, for the tiny random model."""
    path = plan.runs / "tokenizer.json"
    if not path.is_file():
        from morejax.models.gguf import gguf_reader, gguf_tokenizer, smollm2_path

        path.parent.mkdir(parents=True, exist_ok=True)
        gguf_tokenizer(gguf_reader(smollm2_path())).save(str(path))


def run_train(plan: Plan, method: str, micro_batches: int | None = None) -> dict:
    from morejax.train import config, loop

    cfg, exp = load_exp(plan, method, micro_batches)
    workdir = plan.runs / plan.table.name / method
    start = time.time()
    out = loop.train(exp, workdir, resolved=config.to_json(cfg), progress=False)
    final = out["final"] or [{}] * len(plan.lrs[method])
    return {
        "method": method,
        "lrs": list(plan.lrs[method]),
        "val_loss": [float(m.get("loss", math.nan)) for m in final],
        "steps": out["steps"],
        "init_error": out["init_error"],
        "test_overlap": out.get("test_overlap"),
        "micro_batches": cfg.micro_batches,
        "workdir": str(workdir),
        "wall_s": round(time.time() - start, 1),
    }


def generate_scores(model, params, tokenizer, sets: dict, tokens: int) -> dict:
    """Accuracy per set on the given records (merged params: one plain forward per token)."""
    from morejax.data import reasoning
    from morejax.models import generate

    # Prompts padded to a multiple of 64: a few compiled shapes instead of one per batch.
    fn = generate.text_generator(
        (model, params, tokenizer),
        max_new_tokens=tokens,
        pad_to_multiple=64,
    )
    n = max(len(r) for r in sets.values())
    # Decoding a row costs little more than decoding 16 (each step reads all the weights):
    # one batch per set of up to 32 records.
    return reasoning.evaluate(fn, sets, batch_size=min(32, n))


def restore_merged(plan: Plan, method: str, chosen: dict):
    """(model, tokenizer, pretrained params, merged params, base, adapters) of a finished run."""
    import jax

    import morejax
    from morejax.train import evaluate
    from morejax.train.model import load_model

    _, exp = load_exp(plan, method)
    s, _, stacked, _ = evaluate.restore_checkpoint(exp, chosen["workdir"], "best")
    adapters = jax.tree.map(lambda x: x[chosen["member"]], stacked)  # the chosen member
    pretrained = load_model(exp.model, seed=exp.seed).params
    merged = morejax.merge(s.base, adapters)
    return s.loaded.model, s.loaded.tokenizer, pretrained, merged, s.base, adapters


def run_test(plan: Plan, method: str) -> dict:
    import morejax
    from morejax import subspace

    chosen = best_lr(plan, method)
    start = time.time()
    model, tok, pretrained, merged, base, adapters = restore_merged(plan, method, chosen)
    scores = generate_scores(model, merged, tok, test_records(plan, plan.sets), plan.tokens)
    rows = subspace.kernel_shifts(pretrained, base, adapters, SUBSPACE_K)
    return {
        "method": method,
        "lr": chosen["lr"],
        "val_loss": chosen["val_loss"],
        "params": morejax.count_params(adapters),
        "scores": scores,
        "shifts": subspace.summarize_shifts(rows),
        "weights": weights_digest(pretrained),
        "wall_s": round(time.time() - start, 1),
    }


def run_base(plan: Plan, names) -> dict:
    from morejax.train.model import load_model

    _, exp = load_exp(plan, plan.methods[0])
    start = time.time()
    loaded = load_model(exp.model, seed=exp.seed)
    scores = generate_scores(
        loaded.model, loaded.params, loaded.tokenizer, test_records(plan, names), plan.tokens
    )
    wall = round(time.time() - start, 1)
    return {"scores": scores, "weights": weights_digest(loaded.params), "wall_s": wall}


def run_forget(plan: Plan, other: Plan, unseen: Plan, method: str | None) -> dict:
    """A trained model (or the base, method None) on the unseen sets (scored as in `unseen`,
    the commonsense plan: same subsets and answer length for every model) and on the other
    table's sets (as that table scores them)."""
    if method is None:
        return run_base(unseen, unseen.unseen) | {"cross": None}
    start = time.time()
    chosen = best_lr(plan, method) | {"workdir": str(plan.runs / plan.table.name / method)}
    retrained = None
    if not has_checkpoint(plan, method):
        # runs/ is not in git: a fresh clone retrains the same program (same seed, same
        # rate grid) and checks that it lands on the validation loss the table recorded.
        print(f"  no checkpoint for {plan.table.name}/{method}: retraining it", flush=True)
        again = run_train(plan, method, chosen.get("micro_batches"))
        retrained = again["val_loss"][chosen["member"]]
        if not math.isclose(retrained, chosen["val_loss"], rel_tol=1e-3):
            raise RuntimeError(
                f"retrained {plan.table.name}/{method} reached validation loss {retrained:.5f}, "
                f"the table recorded {chosen['val_loss']:.5f}: not the same model; delete "
                f"{point_path(plan, 'train/' + method)} and rerun the table to retrain both"
            )
    model, tok, pretrained, merged, _, _ = restore_merged(plan, method, chosen)
    scores = generate_scores(model, merged, tok, test_records(unseen, unseen.unseen), unseen.tokens)
    cross = generate_scores(model, merged, tok, test_records(other, other.sets), other.tokens)
    return {
        "method": method,
        "lr": chosen["lr"],
        "scores": scores,
        "cross": cross,
        "retrained_val_loss": retrained,
        "weights": weights_digest(pretrained),
        "wall_s": round(time.time() - start, 1),
    }


def commit(paths: list[Path], message: str) -> None:
    """Commits only these files (others' staged or unstaged work stays out)."""
    rel = [str(p.relative_to(ROOT)) for p in paths if p.exists()]
    subprocess.run(["git", "add", "--", *rel], cwd=ROOT, check=True)
    subprocess.run(["git", "commit", "-q", "-m", message, "--", *rel], cwd=ROOT, check=False)


def run_points(plan: Plan, names, do, command, write, args, argv) -> None:
    """Each missing point in order (`morejax.points.run`); by default each in a child process
    (this script with `--only`), so a long table does not accumulate compiled programs."""

    def work(step) -> dict | None:
        print(f"[{time.strftime('%H:%M:%S')}] {plan.table.name}: {step.name}", flush=True)
        path = point_path(plan, step.name)
        if args.only or args.in_process:
            load = points.load_average()
            rec = do(step.name)
            if rec is None:
                return None
            rec["settings"] = plan.settings()
            rec["load"] = load
            points.write_json(path, rec)
        else:
            child = [a for a in argv if a != "--commit"] + ["--only", step.name]
            subprocess.run([sys.executable, __file__, *child], check=True)
            rec = point(plan, step.name)
            if rec is None:
                return None  # skipped (unfinished inputs)
        md = write(command)
        print(f"  done in {rec['wall_s']:.0f} s -> {path}", flush=True)
        if args.commit:
            commit([path, md], f"results: {plan.table.name} {step.name}")
        return rec

    steps = [Step(n) for n in names if not args.only or n == args.only]
    code = points.run(lambda done: steps, load=lambda step: point(plan, step.name), work=work)
    if code:
        raise SystemExit(code)


@dataclasses.dataclass(frozen=True)
class Step:
    name: str


def measure(args) -> dict:
    """Seconds per padded training token, per prefill token and per decode step, here, now."""
    import jax
    import jax.numpy as jnp

    import morejax
    from configs import common
    from morejax.models import generate
    from morejax.models.registry import load_pretrained

    t0 = time.time()
    pre = load_pretrained("smollm2-135m", dtype="float32")
    load_s = time.time() - t0
    base, adapters = morejax.adapt(
        pre.params, {common.QKVUD_LLAMA: morejax.LoRA(4, 8.0)}, jax.random.key(0)
    )
    B, L = 16, args.measure_len
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 49152, (B, L)), jnp.int32)
    mask = jnp.ones_like(ids)

    def loss(a, b):
        logits = morejax.call(pre.model.apply, b, a, ids, mask)
        logits = logits[0] if isinstance(logits, tuple) else logits
        return jnp.mean(jax.nn.logsumexp(logits, -1))

    step = jax.jit(jax.grad(loss))
    jax.block_until_ready(step(adapters, base))
    t0 = time.time()
    for _ in range(2):
        jax.block_until_ready(step(adapters, base))
    train = (time.time() - t0) / 2 / (B * L)
    prompts = ["Below is an instruction. " * 12] * 16
    gen = lambda n: generate.generate_text(pre, prompts, n, stop_ids=())
    gen(2)
    gen(18)
    t0 = time.time()
    gen(2)
    short = time.time() - t0
    t0 = time.time()
    gen(18)
    decode = (time.time() - t0 - short) / 16
    n_prompt = len(pre.tokenizer.encode(prompts[0]).ids)
    out = {
        "train_s_per_token": train,
        "prefill_s_per_token": max(short - 2 * decode, 0.0) / (16 * n_prompt),
        "decode_s_per_step": decode,
        "load_s": load_s,
        "machine": points.machine_text(),
        "batch": B,
        "length": L,
    }
    return out


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--table", choices=("commonsense", "math", "forgetting"))
    parser.add_argument("--methods", nargs="+", help=f"default: {' '.join(METHODS)}")
    parser.add_argument("--lrs", nargs="+", type=float, help="one grid for every method")
    parser.add_argument("--reduced", action="store_true", help="CI smoke: tiny random model")
    parser.add_argument("--dry-run", action="store_true", help="list points, estimated times")
    parser.add_argument("--measure", action="store_true", help="time training and decoding")
    parser.add_argument("--measure-len", type=int, default=128)
    parser.add_argument("--commit", action="store_true", help="git-commit each finished point")
    parser.add_argument("--out-dir", default=str(ROOT / "results"))
    parser.add_argument("--workdir", default=str(ROOT / "runs" / "reasoning_tables"))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--only", help="run this one point (what each child process does)")
    parser.add_argument("--in-process", action="store_true", help="no child processes")
    args = parser.parse_args(argv)
    if not args.table and not args.measure:
        parser.error("--table is required (or --measure)")
    return args


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else map(str, argv))
    args = parse_args(argv)
    from morejax.train import compile_cache

    compile_cache.enable()  # the points share programs (seeds, tasks of one shape)
    timing_path = Path(args.out_dir) / "reasoning_tables_timing.json"
    if args.measure:
        timing = measure(args)
        points.write_json(timing_path, timing)
        print(json.dumps(timing, indent=1))
        return
    timing = points.read_json(timing_path) or DEFAULT_TIMING
    shown = [a for a in argv if a not in ("--only", args.only, "--in-process")]
    command = "python experiments/reasoning_tables.py " + " ".join(shown)
    names = ("commonsense", "math") if args.table == "forgetting" else (args.table,)
    plans = {n: make_plan(n, args) for n in names}
    if args.dry_run:
        return dry_run(plans, args.table, timing)
    if args.reduced:
        for plan in plans.values():
            prepare_reduced(plan)
    if args.table == "forgetting":
        return run_forgetting(plans, command, args, argv)
    plan = plans[args.table]

    def do(name):
        parts = name.split("/")
        if parts[0] == "train":
            return run_train(plan, parts[1])
        if parts[1] == "base":
            return run_base(plan, plan.sets)
        return run_test(plan, parts[1])

    write = lambda c: write_table_md(plan, c)
    run_points(plan, table_points(plan), do, command, write, args, argv)
    if not args.only:
        print(write_table_md(plan, command).read_text())


def run_forgetting(plans: dict, command: str, args, argv) -> None:
    unseen = plans["commonsense"]

    def do(name):
        parts = name.split("/")
        if parts[1] == "base":
            return run_forget(unseen, unseen, unseen, None)
        plan = plans[parts[1]]
        if best_lr(plan, parts[2]) is None:
            print(f"  skipped: {parts[1]} {parts[2]} has unfinished training points")
            return None
        return run_forget(plan, plans[plan.table.other], unseen, parts[2])

    write = lambda c: write_forget_md(plans, c)
    run_points(next(iter(plans.values())), forget_points(plans), do, command, write, args, argv)
    if not args.only:
        print(write_forget_md(plans, command).read_text())


def dry_run(plans: dict, table: str, timing: dict) -> None:
    """Each point, done or its estimated minutes (scaled by the finished points' actual /
    estimated time), and the total still to run."""
    total = 0.0
    for plan in plans.values():
        names = table_points(plan) if table != "forgetting" else forget_points(plans)
        scale = calibration(plans, plan, names, timing)
        for name in names:
            done = point(plan, name) is not None
            est = 0.0
            if not done:
                est = estimate_s(plans, plan, name, timing) * scale.get(kind(name), 1)
            total += est
            print(f"{name:40s} {'done' if done else f'~{est / 60:.0f} min'}")
        if scale:
            print("estimates scaled by the finished points' actual/estimated: " + str(scale))
        if table == "forgetting":
            break
    where = timing.get("machine", "built-in defaults")
    print(f"total still to run: ~{total / 3600:.2f} h (timing: {where})")


if __name__ == "__main__":
    main()
