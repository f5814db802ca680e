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
import os
import platform
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from experiments.glue_table import write_report  # noqa: E402  (keeps the prose below a table)

METHODS = ("lora", "pissa", "milora", "dora", "more", "more_minor")
EXPLORATORY = {"more_minor"}
LABELS = {
    "lora": "LoRA",
    "pissa": "PiSSA",
    "milora": "MiLoRA",
    "dora": "DoRA",
    "more": "MoRe nb4",
    "more_minor": "MoReMinor nb4 (exploratory)",
}
COMMONSENSE = ("boolq", "ARC-Easy", "ARC-Challenge", "openbookqa")
MATH = ("gsm8k", "AQuA", "AddSub", "MultiArith", "SingleEq", "SVAMP", "mawps")
UNSEEN = ("piqa", "social_i_qa", "winogrande")
# Two rates per method (the config's default and 3x): a third would cost a third more of the
# 2.5 h budget in training steps (see the configs' sizing).
LR_FACTORS = (1.0, 3.0)
FACTORS = " and ".join(f"{f:g}" for f in LR_FACTORS)
MARGIN = 1.3  # estimates: measured costs x this (other users share the 2 cores)
SUBSPACE_K = 16
SEED = 0


@dataclasses.dataclass(frozen=True)
class Table:
    name: str
    config: str
    sets: tuple[str, ...]
    per_set: int  # test records per set (a fixed random subset)
    tokens: int  # new tokens at most
    other: str  # the other table, for the cross-forgetting sets


TABLES = {
    "commonsense": Table(
        "commonsense", "configs/commonsense_smollm2.py", COMMONSENSE, 64, 32, "math"
    ),
    "math": Table("math", "configs/math_smollm2.py", MATH, 24, 160, "commonsense"),
}
# Measured on this machine with `--measure` (see results/<table>_small.md); used by --dry-run.
DEFAULT_TIMING = {
    "train_s_per_token": 0.02,  # padded tokens, forward + backward, batch 16
    "prefill_s_per_token": 0.004,
    "decode_s_per_step": 0.15,  # one token for a batch of 16
    "load_s": 30.0,
}
TINY = dict(
    num_layers=2,
    hidden_size=32,
    num_heads=2,
    num_kv_heads=1,
    head_dim=16,
    intermediate_size=64,
)


# ----------------------------------------------------------------------------- small helpers


def write_json(path: Path, payload: dict) -> None:
    """Atomic: a crash leaves the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=1) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def load_now() -> float:
    return round(os.getloadavg()[0], 1) if hasattr(os, "getloadavg") else float("nan")


def machine(with_load: bool = True) -> str:
    import jax

    text = (
        f"{os.cpu_count()} CPU cores ({platform.machine()}, {platform.system()}), "
        f"Python {platform.python_version()}, jax {jax.__version__}"
    )
    return text + (f", load {load_now():.1f} at start" if with_load else "")


def subset(records: list, n: int, name: str) -> list:
    """A fixed random subset (seeded by the set name), in file order."""
    if n >= len(records):
        return list(records)
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    return [records[i] for i in sorted(rng.choice(len(records), n, replace=False))]


def weights_digest(params) -> str:
    """sha256 of every leaf (sorted paths, float32 bytes): the same tensors for every method."""
    from morejax import paths

    h = hashlib.sha256()
    for path, leaf in sorted(paths.flatten(params).items()):
        h.update(path.encode())
        h.update(np.ascontiguousarray(np.asarray(leaf, np.float32)).tobytes())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------- the plan


# What the points finished before `train_data` was recorded were trained on. math_data.json
# turned out to be the arithmetic test sets themselves; its points are kept, for comparison
# only, in results/math_small_math_data/.
LEGACY_TRAIN_DATA = {
    "commonsense": "boolq+ARC-Easy+ARC-Challenge+openbookqa",
    "math": "math_data",
}
CONTAMINATED = {"math": "math_small_math_data"}


@dataclasses.dataclass
class Plan:
    table: Table
    methods: tuple[str, ...]
    lrs: dict  # method -> learning rates
    steps: int
    per_set: int
    tokens: int
    reduced: bool
    overrides: tuple[str, ...]
    out: Path  # results/<table>_small
    runs: Path
    train_data: str  # the config's data.task

    @property
    def sets(self) -> tuple[str, ...]:
        return self.table.sets[:2] if self.reduced else self.table.sets

    @property
    def unseen(self) -> tuple[str, ...]:
        return UNSEEN[:1] if self.reduced else UNSEEN

    def settings(self) -> dict:
        """What a finished point depends on: a changed value makes it stale."""
        return {
            "steps": self.steps,
            "per_set": self.per_set,
            "lrs": self.lrs,
            "tokens": self.tokens,
            "reduced": self.reduced,
            "overrides": list(self.overrides),
            "train_data": self.train_data,
        }

    def config_overrides(self, method: str) -> dict:
        lrs = tuple(self.lrs[method])
        out = {"method": method, "optimizer.learning_rate": lrs[0], "data.generate_sets": ()}
        out["vmap_learning_rates"] = lrs
        out.update(steps=self.steps, checkpoint_every=max(1, min(50, self.steps // 4)))
        if self.reduced:
            out.update(
                {
                    "model.pretrained": False,
                    "model.overrides": dict(TINY, vocab_size=49152),
                    "model.tokenizer": str(self.runs / "tokenizer.json"),
                    "data.eval_limit": 4,
                    "data.buckets": None,
                    "log_every": 1,
                }
            )
        return out


def default_lrs(table: Table, methods, reduced: bool) -> dict:
    from morejax.train import config

    lr_of = config.load_module(ROOT / table.config).LR
    return {
        m: [lr_of[m]] if reduced else [float(f"{lr_of[m] * f:.2g}") for f in LR_FACTORS]
        for m in methods
    }


def load_exp(plan: Plan, method: str, micro_batches: int | None = None):
    from morejax.train import config

    extra = plan.config_overrides(method)
    if micro_batches:  # memory only, but it draws dropout masks per micro-batch
        extra["micro_batches"] = micro_batches
    cfg = config.load(ROOT / plan.table.config, plan.overrides, extra=extra)
    return cfg, config.build(cfg)


def prepare_reduced(plan: Plan) -> None:
    """SmolLM2's tokenizer as tokenizer.json, for the tiny random model."""
    path = plan.runs / "tokenizer.json"
    if not path.is_file():
        from morejax.models.gguf import gguf_reader, gguf_tokenizer, smollm2_path

        path.parent.mkdir(parents=True, exist_ok=True)
        gguf_tokenizer(gguf_reader(smollm2_path())).save(str(path))


# ----------------------------------------------------------------------------- points


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


def has_checkpoint(plan: Plan, method: str) -> bool:
    return any((plan.runs / plan.table.name / method / "checkpoints").glob("*"))


def test_records(plan: Plan, names, per_set: int | None = None) -> dict:
    from morejax.data import reasoning

    n = per_set or plan.per_set
    return {s: subset(reasoning.load_records(s, "test"), n, s) for s in names}


def best_lr(plan: Plan, method: str) -> dict | None:
    """The member with the lowest validation loss: {lr, member, val_loss, workdir}."""
    rec = point(plan, f"train/{method}")
    if rec is None:
        return None
    losses = [math.inf if math.isnan(v) else v for v in rec["val_loss"]]
    i = int(np.argmin(losses))
    return {**rec, "lr": rec["lrs"][i], "member": i, "val_loss": rec["val_loss"][i]}


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


# ----------------------------------------------------------------------------- bookkeeping


def point_path(plan: Plan, name: str) -> Path:
    return plan.out / (name.replace("/", "__") + ".json")


def point(plan: Plan, name: str) -> dict | None:
    """A finished point's record, or None when missing or made with other settings."""
    rec = read_json(point_path(plan, name))
    if rec is None:
        return None
    settings = dict(rec.get("settings") or {})
    settings.setdefault("train_data", LEGACY_TRAIN_DATA.get(plan.table.name))
    return rec if settings == plan.settings() else None


def table_points(plan: Plan) -> list[str]:
    names = [f"train/{m}" for m in plan.methods]
    return names + ["test/base"] + [f"test/{m}" for m in plan.methods]


def forget_points(plans: dict) -> list[str]:
    names = ["forget/base"]
    for t, plan in plans.items():
        names += [f"forget/{t}/{m}" for m in plan.methods]
    return names


_PLANS: dict = {}


def plans_of(plan: Plan) -> dict:
    return _PLANS


def estimate_s(plan: Plan, name: str, timing: dict) -> float:
    """Seconds for one point: measured costs x MARGIN, plus per-run overheads (load, adapt,
    compile, validation). Padded lengths: commonsense ~110 tokens, math ~180 (measured on
    the training files with the configs' buckets); trained models stop at EOS."""
    t = {k: v * MARGIN for k, v in timing.items() if isinstance(v, float)}
    math_table = plan.table.name == "math"
    padded = 180 if math_table else 110
    # Per point: loads, restore / merge / digest / subspace angles, and compiling the
    # decoding loop for ~3 prompt lengths (20 s each); a training point instead compiles
    # its train and eval steps and inits the adapters (~150 s, a 2-step run on a busy
    # machine took 450 s).
    overhead = 2 * t["load_s"] + 60.0 + 3 * 20.0 * MARGIN

    def generation(sets, n, tokens, stop_at):
        batches = sum(math.ceil(n / 16) for _ in sets)
        per_batch = (
            16 * 100 * t["prefill_s_per_token"] + min(tokens, stop_at) * t["decode_s_per_step"]
        )
        return batches * per_batch

    if name.startswith("train/"):
        val = 96 * padded * t["prefill_s_per_token"]
        setup = 150.0 * MARGIN
        members = len(plan.lrs[name.split("/")[1]])  # one program trains every rate
        return setup + members * (plan.steps * 16 * padded * t["train_s_per_token"] + val)
    stop = 150 if math_table else 12  # decode steps until a batch's rows all stop
    if name == "test/base":
        stop = plan.tokens  # the untuned model rarely stops early
    if name.startswith("test/"):
        return overhead + 30.0 + generation(plan.sets, plan.per_set, plan.tokens, stop)
    cs = plans_of(plan)["commonsense"]
    own = generation(cs.unseen, cs.per_set, cs.tokens, cs.tokens)
    if name == "forget/base":
        return overhead + own
    # The other table's sets: a model tuned on the other format mostly stops early.
    trained = plans_of(plan)[name.split("/")[1]]
    other = plans_of(plan)[trained.table.other]
    method = name.split("/")[2]
    retrain = (
        0.0 if has_checkpoint(trained, method) else estimate_s(trained, f"train/{method}", timing)
    )
    return overhead + own + generation(other.sets, other.per_set, other.tokens, 40) + retrain


def kind(name: str) -> str:
    return name.split("/")[0]


def calibration(plan: Plan, names, timing: dict) -> dict:
    """{point kind: mean actual / estimated wall time} over finished points: the measured
    micro-benchmark misses data loading, the optimizer and compilation, a finished point
    does not."""
    ratios: dict = {}
    for name in names:
        rec = point(plan, name)
        if rec is not None and rec.get("wall_s"):
            ratios.setdefault(kind(name), []).append(rec["wall_s"] / estimate_s(plan, name, timing))
    return {k: round(float(np.mean(v)), 2) for k, v in ratios.items()}


def commit(paths: list[Path], message: str) -> None:
    """Commits only these files (others' staged or unstaged work stays out)."""
    rel = [str(p.relative_to(ROOT)) for p in paths if p.exists()]
    subprocess.run(["git", "add", "--", *rel], cwd=ROOT, check=True)
    subprocess.run(["git", "commit", "-q", "-m", message, "--", *rel], cwd=ROOT, check=False)


# ----------------------------------------------------------------------------- reports

PAPER = {
    "commonsense": (
        "MiLoRA paper, commonsense average over 8 sets (LLaMA-2-7B, r=32, commonsense_170k): "
        "LoRA 77.6, PiSSA 73.8, MiLoRA 79.2 (LLaMA-3-8B: 80.8 / 75.4 / 81.9)",
        {"lora": 77.6, "pissa": 73.8, "milora": 79.2},
    ),
    "math": (
        "MiLoRA paper, GSM8K (LLaMA-2-7B, r=64, math_10k): LoRA 60.6, PiSSA 58.2, MiLoRA 63.5 "
        "(MATH: 16.9 / 15.8 / 17.8)",
        {"lora": 60.6, "pissa": 58.2, "milora": 63.5},
    ),
}


DIFFERS = {
    "commonsense": "4 of the 8 sets (the others have no train file here)",
    "math": "GSM8K's training split (7,473 problems, worked solutions without their "
    "calculator annotations) instead of math_10k",
}


def fmt(x) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def ranking_note(table: str, rows: dict, n_records: int) -> str:
    """Whether the small-scale order of LoRA / PiSSA / MiLoRA is the paper's, and whether the
    test subset (n_records behind the compared score) can tell them apart at all."""
    paper = PAPER[table][1]
    key = "average" if table == "commonsense" else "gsm8k"
    if not all(m in rows for m in paper):
        return "Ranking: not yet known (LoRA, PiSSA and MiLoRA must all finish)."
    small = {m: round(100 * rows[m]["scores"][key], 1) for m in paper}

    def order(d):
        ranked = sorted(d, key=lambda m: -d[m])
        text = LABELS[ranked[0]]
        for a, b in zip(ranked, ranked[1:]):
            text += (" = " if d[a] == d[b] else " > ") + LABELS[b]
        return text

    agree = order(small) == order(paper)
    exact = {m: 100 * rows[m]["scores"][key] for m in paper}  # gaps from unrounded scores
    ranked = sorted(exact, key=lambda m: -exact[m])
    steps = ", ".join(
        f"{LABELS[a]} - {LABELS[b]} = {exact[a] - exact[b]:.2f}" for a, b in zip(ranked, ranked[1:])
    )
    gap = exact[ranked[0]] - exact[ranked[-1]]
    p = sum(exact.values()) / 300
    # Two accuracies on n records each differ by 2 standard errors of their difference
    # by chance about 1 time in 20; below that the subset does not order the methods.
    noise = 200 * math.sqrt(2 * max(p * (1 - p), 1 / n_records) / n_records)
    resolved = gap > noise
    return (
        f"Ranking on {key}: here {order(small)}; paper {order(paper)}: "
        f"{'the same order' if agree else 'a different order'}. The gaps here ({steps}) "
        f"span {gap:.2f} points on {n_records} test records, "
        + (
            f"above the {noise:.1f} points that sampling alone gives 1 time in 20."
            if resolved
            else f"within the {noise:.1f} points that sampling alone gives 1 time in 20: "
            "this subset does not resolve the order."
        )
    )


def header(title: str, command: str, recs: dict, extra: list[str]) -> list[str]:
    done = [r for r in recs.values() if r]
    wall = sum(r["wall_s"] for r in done)
    # The load when each point started, not when this report is written (often much later).
    loads = [r["load"] for r in done if "load" in r]
    load = (
        f"1-minute load when a point started: {min(loads):.1f} to {max(loads):.1f}"
        + (f" ({len(loads)} of {len(done)} points recorded it)" if len(loads) < len(done) else "")
        if loads
        else "load at the start of each point not recorded"
    )
    return [
        f"# {title}",
        "",
        "```",
        command,
        "```",
        "",
        f"Machine: {machine(with_load=False)}; {load}. "
        f"Wall time of the finished points: {wall / 3600:.2f} h.",
        "",
        *extra,
    ]


def sizing_note(plan: Plan) -> str:
    """The measured costs behind the sizing, and the estimate for the whole table."""
    timing = read_json(plan.out.parent / "reasoning_tables_timing.json") or DEFAULT_TIMING
    total = sum(estimate_s(plan, n, timing) for n in table_points(plan))
    return (
        f"Sizing: measured here ({timing.get('machine', 'built-in defaults')}): "
        f"{1000 * timing['train_s_per_token']:.2f} ms per padded training token (batch 16), "
        f"{1000 * timing['prefill_s_per_token']:.2f} ms per prompt token, "
        f"{1000 * timing['decode_s_per_step']:.0f} ms per decoding step of 16 rows; with a "
        f"{MARGIN}x margin the table is estimated at {total / 3600:.2f} h "
        "(`--dry-run` lists each point; budget 2.5 h of this 2-core machine)."
    )


def overlap_note(plan: Plan, recs: dict) -> str:
    """Train/test overlap of the table's training file, computed now from the data, and
    whether its finished points were trained with the guard (morejax.data.overlap)."""
    from morejax.data import overlap, reasoning
    from morejax.train.inputs import scored_sets

    from_config = load_exp(plan, plan.methods[0])[1].data
    sets = tuple(dict.fromkeys((*scored_sets(from_config), *plan.sets, *UNSEEN)))
    counts = {}
    for split in ("train", "validation"):
        guard = overlap.Guard(sets)
        reasoning.load_examples(plan.train_data, split, keep=guard.keep)
        counts[split] = guard.report(split)
    scored = {
        overlap.record_key(r) for recs_ in test_records(plan, plan.sets).values() for r in recs_
    }
    train_keys = {
        overlap.record_key(r)
        for split in ("train", "validation")
        for r in reasoning.load_split_records(plan.train_data, split, required=("instruction",))
    }
    in_scored = len(scored & train_keys)
    trained = [r for n, r in recs.items() if n.startswith("train/") and r]
    guarded = [r for r in trained if r.get("test_overlap") is not None]
    text = (
        f"Train/test overlap (`morejax.data.overlap`: normalised instruction + input, against the "
        f"full test files of {', '.join(sets)}): "
        + "; ".join(f"{c.dropped} of {c.total} {s} records" for s, c in counts.items())
        + f"; {in_scored} of the {len(scored)} scored test records occur in the training file. "
    )
    if len(guarded) == len(trained):
        return text + "Every training point ran with the guard, which drops such records."
    return text + (
        f"{len(trained) - len(guarded)} of the {len(trained)} training points ran before the "
        "guard existed and trained on every record of the file, these included."
    )


def before_and_after(plan: Plan, tests: dict, cols: list) -> list[str]:
    """The same test subsets, scored after training on the contaminated file (math_data)."""
    folder = CONTAMINATED.get(plan.table.name)
    if plan.reduced or folder is None or not (plan.out.parent / folder).is_dir():
        return []
    old = {
        m: read_json(plan.out.parent / folder / f"test__{m}.json") for m in ("base", *plan.methods)
    }
    lines = [
        f"Before and after (averages over {', '.join(plan.sets)}; same test subsets, same "
        f'decoding). "before": trained on {LEGACY_TRAIN_DATA[plan.table.name]}.json, whose '
        "every record is a problem of these test sets (the 2026-12-05 table, its points in "
        f'results/{folder}/); "after": trained on {plan.train_data}.',
        "",
        "| method | before | after | change |",
        "|---|---|---|---|",
    ]
    for m in ("base", *plan.methods):
        was = (old.get(m) or {}).get("scores", {}).get("average")
        now = (tests.get(m) or {}).get("scores", {}).get("average")
        change = f"{100 * (now - was):+.1f}" if was is not None and now is not None else "…"
        label = "untuned" if m == "base" else LABELS[m]
        lines += [f"| {label} | {fmt(was)} | {fmt(now)} | {change} |"]
    return lines + [""]


def write_table_md(plan: Plan, command: str) -> Path:
    t = plan.table
    names = table_points(plan)
    recs = {n: point(plan, n) for n in names}
    missing = [n for n, r in recs.items() if r is None]
    tests = {n.split("/")[1]: r for n, r in recs.items() if n.startswith("test/") and r}
    digests = sorted({r["weights"] for r in tests.values()})
    cols = list(plan.sets) + ["average"]
    lines = header(
        f"{t.name.capitalize()} reasoning, small scale (SmolLM2-135M)",
        command,
        recs,
        [
            ("REDUCED smoke run: a tiny random LLaMA, not SmolLM2. " if plan.reduced else "")
            + f"Base model: SmolLM2-135M-Instruct, its Q4_1 GGUF dequantised to float32; every "
            f"method starts from the same tensors (sha256 prefix {', '.join(digests) or '–'}). "
            f"Adapters on q,k,v,up,down of all 30 layers; {plan.steps} steps of batch 16; "
            f"{plan.per_set} test records per set (a fixed random subset, seeded by the set's "
            f"name), greedy decoding with the KV cache, at most {plan.tokens} new tokens, "
            "stopping at EOS; LLM-Adapters prompts and answer extraction. Learning rate per "
            f"method: the lowest validation loss of {FACTORS} x the "
            "config's default (validation: held-out training records).",
            "",
            overlap_note(plan, recs),
            "",
        ],
    )
    lines += ["| method | params | lr | " + " | ".join(cols) + " |"]
    lines += ["|---|---|---|" + "---|" * len(cols)]
    if "base" in tests:
        s = tests["base"]["scores"]
        lines += ["| untuned | 0 | – | " + " | ".join(fmt(s.get(c)) for c in cols) + " |"]
    for m in plan.methods:
        r = tests.get(m)
        if r is None:
            lines += [f"| {LABELS[m]} | … | … | " + " | ".join("…" for _ in cols) + " |"]
            continue
        s = r["scores"]
        lines += [
            f"| {LABELS[m]} | {r['params']:,} | {r['lr']:g} | "
            + " | ".join(fmt(s.get(c)) for c in cols)
            + " |"
        ]
    paper_text, _ = PAPER[t.name]
    width = max(map(len, plan.lrs.values()))
    lines += [
        "",
        f"Paper (for comparison, not the same experiment): {paper_text}. What differs: a "
        f"135M model instead of 7B, {plan.steps * 16:,} training examples (a fraction of an "
        f"epoch) instead of 3 epochs of {'170k' if t.name == 'commonsense' else '10k'}, "
        f"{DIFFERS[t.name]}, "
        "subsets of the test sets, float32 throughout.",
        "",
        ranking_note(
            t.name, tests, plan.per_set * (len(plan.sets) if t.name == "commonsense" else 1)
        ),
        "",
        "Validation loss per learning rate:",
        "",
        "| method | " + " | ".join(f"lr {i + 1}" for i in range(width)) + " |",
        "|---|" + "---|" * width,
    ]
    for m in plan.methods:
        cells = []
        r = recs.get(f"train/{m}")
        for i, lr in enumerate(plan.lrs[m]):
            cells.append(f"{lr:g}: {r['val_loss'][i]:.4f}" if r else f"{lr:g}: …")
        lines += [f"| {LABELS[m]} | " + " | ".join(cells) + " |"]
    lines += ["", sizing_note(plan), ""]
    lines += before_and_after(plan, tests, cols)
    lines += [f"Missing points ({len(missing)}): " + (", ".join(missing) or "none"), ""]
    path = ROOT / "results" / f"{t.name}_small.md" if not plan.reduced else plan.out / "table.md"
    write_report(path, "\n".join(lines) + "\n")  # the reading written below it stays
    return path


def write_forget_md(plans: dict, command: str) -> Path:
    first = next(iter(plans.values()))
    names = forget_points(plans)
    recs = {n: point(first, n) for n in names}
    missing = [n for n, r in recs.items() if r is None]
    lines = header(
        "Forgetting after fine-tuning, small scale (SmolLM2-135M)",
        command,
        recs,
        [
            "(a) Accuracy on sets the model never trained on (piqa, social_i_qa, winogrande; "
            "and the other table's sets), against the untuned model. (b) How far each adapted "
            f"matrix's top-{SUBSPACE_K} singular subspaces moved: principal angles between the "
            "pretrained and the merged fine-tuned kernel, mean over the 30 layers of each "
            "projection's mean angle (degrees), input side / output side. The input-side "
            "angles as bars, with the spectra they start from: results/figures/spectra_*.png "
            "(`python experiments/make_figures.py notebooks/spectra.py`).",
            "",
        ],
    )
    base = recs.get("forget/base")
    for t, plan in plans.items():
        other = plans[plan.table.other]
        cross_cols = list(plans[plan.table.other].sets)
        cols = list(plan.unseen) + cross_cols
        lines += [f"## Trained on {t}", ""]
        lines += ["| model | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
        b = dict(base["scores"]) if base else {}
        if point(other, "test/base"):
            b.update(point(other, "test/base")["scores"])
        lines += ["| untuned | " + " | ".join(fmt(b.get(c)) for c in cols) + " |"]
        for m in plan.methods:
            r = recs.get(f"forget/{t}/{m}")
            s = dict(r["scores"]) | dict(r["cross"] or {}) if r else {}
            lines += [f"| {LABELS[m]} | " + " | ".join(fmt(s.get(c)) for c in cols) + " |"]
        lines += ["", f"Principal angles after {t} fine-tuning (degrees, input / output):", ""]
        projs = ("q_proj", "k_proj", "v_proj", "up_proj", "down_proj")
        lines += ["| method | " + " | ".join(projs) + " |", "|---|" + "---|" * len(projs)]
        for m in plan.methods:
            r = point(plan, f"test/{m}")
            cells = []
            for p in projs:
                sh = (r or {}).get("shifts", {}).get(p)
                cells.append(
                    f"{sh['left_mean_deg']:.2f} / {sh['right_mean_deg']:.2f}" if sh else "…"
                )
            lines += [f"| {LABELS[m]} | " + " | ".join(cells) + " |"]
        lines += [""]
    lines += [f"Missing points ({len(missing)}): " + (", ".join(missing) or "none"), ""]
    path = (
        ROOT / "results" / "forgetting_small.md"
        if not first.reduced
        else first.out / "forgetting.md"
    )
    write_report(path, "\n".join(lines) + "\n")  # the reading written below it stays
    return path


# ----------------------------------------------------------------------------- main


def make_plan(name: str, args) -> Plan:
    table = TABLES[name]
    methods = tuple(args.methods or (("lora", "more_minor") if args.reduced else METHODS))
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise SystemExit(f"error: unknown method(s) {bad}; use {', '.join(METHODS)}")
    from morejax.train import config

    cfg = config.load(ROOT / table.config)
    steps = 2 if args.reduced else cfg.steps
    lrs = default_lrs(table, methods, args.reduced)
    if args.lrs:
        lrs = {m: list(args.lrs) for m in methods}
    out = Path(args.out_dir) / f"{name}_small"
    return Plan(
        table,
        methods,
        lrs,
        steps,
        2 if args.reduced else table.per_set,
        4 if args.reduced else table.tokens,
        args.reduced,
        tuple(args.overrides),
        out,
        Path(args.workdir),
        cfg.data.task,
    )


def run_points(plan: Plan, names, do, command, write, args, argv) -> None:
    """Each missing point in order; by default each in a child process (this script with
    `--only`), so a long table does not accumulate compiled programs and buffers."""
    for name in names:
        if point(plan, name) is not None:
            continue
        if args.only and name != args.only:
            continue
        print(f"[{time.strftime('%H:%M:%S')}] {plan.table.name}: {name}", flush=True)
        path = point_path(plan, name)
        if args.only or args.in_process:
            load = load_now()
            rec = do(name)
            if rec is None:
                continue
            rec["settings"] = plan.settings()
            rec["load"] = load
            write_json(path, rec)
            write(command)
        else:
            child = [a for a in argv if a != "--commit"] + ["--only", name]
            subprocess.run([sys.executable, __file__, *child], check=True)
            rec = point(plan, name)
            if rec is None:
                continue  # skipped (unfinished inputs)
        md = write(command)
        print(f"  done in {rec['wall_s']:.0f} s -> {path}", flush=True)
        if args.commit:
            commit([path, md], f"results: {plan.table.name} {name}")


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
        "machine": machine(),
        "batch": B,
        "length": L,
    }
    return out


def main(argv=None):
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
    argv = list(sys.argv[1:] if argv is None else map(str, argv))
    args = parser.parse_args(argv)
    from morejax.train import compile_cache

    compile_cache.enable()  # the points share programs (seeds, tasks of one shape)
    timing_path = Path(args.out_dir) / "reasoning_tables_timing.json"
    if args.measure:
        timing = measure(args)
        write_json(timing_path, timing)
        print(json.dumps(timing, indent=1))
        return
    if not args.table:
        parser.error("--table is required (or --measure)")
    timing = read_json(timing_path) or DEFAULT_TIMING
    shown = [a for a in argv if a not in ("--only", args.only, "--in-process")]
    command = "python experiments/reasoning_tables.py " + " ".join(shown)
    names = ("commonsense", "math") if args.table == "forgetting" else (args.table,)
    plans = {n: make_plan(n, args) for n in names}
    _PLANS.update(plans)
    if args.dry_run:
        total = 0.0
        for plan in plans.values():
            points = table_points(plan) if args.table != "forgetting" else forget_points(plans)
            scale = calibration(plan, points, timing)
            for name in points:
                done = point(plan, name) is not None
                est = 0.0 if done else estimate_s(plan, name, timing) * scale.get(kind(name), 1)
                total += est
                print(f"{name:40s} {'done' if done else f'~{est / 60:.0f} min'}")
            if scale:
                print("estimates scaled by the finished points' actual/estimated: " + str(scale))
            if args.table == "forgetting":
                break
        print(
            f"total still to run: ~{total / 3600:.2f} h "
            f"(timing: {timing.get('machine', 'built-in defaults')})"
        )
        return
    if args.reduced:
        for plan in plans.values():
            prepare_reduced(plan)
    if args.table == "forgetting":
        first = next(iter(plans.values()))

        def do(name):
            parts = name.split("/")
            unseen = plans["commonsense"]
            if parts[1] == "base":
                return run_forget(unseen, unseen, unseen, None)
            plan = plans[parts[1]]
            other = plans[plan.table.other]
            if best_lr(plan, parts[2]) is None:
                print(f"  skipped: {parts[1]} {parts[2]} has unfinished training points")
                return None
            return run_forget(plan, other, unseen, parts[2])

        write = lambda c: write_forget_md(plans, c)
        run_points(first, forget_points(plans), do, command, write, args, argv)
        if not args.only:
            print(write_forget_md(plans, command).read_text())
        return
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


if __name__ == "__main__":
    main()
