"""The reasoning tables' plan: what each table covers, its points, where each is kept, and
how long what is missing will take. experiments/reasoning_tables.py runs the points,
experiments/reasoning_report.py writes the tables from them.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from pathlib import Path

import numpy as np

from morejax import points

ROOT = Path(__file__).resolve().parents[1]

METHODS = ("lora", "pissa", "milora", "dora", "more", "more_minor")
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
SUBSPACE_K = 16  # the singular subspaces whose angles the tests report
MARGIN = 1.3  # estimates: measured costs x this (other users share the 2 cores)


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


def subset(records: list, n: int, name: str) -> list:
    """A fixed random subset (seeded by the set name), in file order."""
    if n >= len(records):
        return list(records)
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    return [records[i] for i in sorted(rng.choice(len(records), n, replace=False))]


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


def point_path(plan: Plan, name: str) -> Path:
    return plan.out / (name.replace("/", "__") + ".json")


def point(plan: Plan, name: str) -> dict | None:
    """A finished point's record, or None when missing or made with other settings."""
    rec = points.read_json(point_path(plan, name))
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


def estimate_s(plans: dict, plan: Plan, name: str, timing: dict) -> float:
    """Seconds for one point of `plan` (a forgetting point reads the other `plans`): measured
    costs x MARGIN, plus per-run overheads (load, adapt, compile, validation). Padded
    lengths: commonsense ~110 tokens, math ~180 (measured on the training files with the
    configs' buckets); trained models stop at EOS."""
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
    cs = plans["commonsense"]
    own = generation(cs.unseen, cs.per_set, cs.tokens, cs.tokens)
    if name == "forget/base":
        return overhead + own
    # The other table's sets: a model tuned on the other format mostly stops early.
    trained = plans[name.split("/")[1]]
    other = plans[trained.table.other]
    method = name.split("/")[2]
    retrain = (
        0.0
        if has_checkpoint(trained, method)
        else estimate_s(plans, trained, f"train/{method}", timing)
    )
    return overhead + own + generation(other.sets, other.per_set, other.tokens, 40) + retrain


def kind(name: str) -> str:
    return name.split("/")[0]


def calibration(plans: dict, plan: Plan, names, timing: dict) -> dict:
    """{point kind: mean actual / estimated wall time} over finished points: the measured
    micro-benchmark misses data loading, the optimizer and compilation, a finished point
    does not."""
    ratios: dict = {}
    for name in names:
        rec = point(plan, name)
        if rec is not None and rec.get("wall_s"):
            ratios.setdefault(kind(name), []).append(
                rec["wall_s"] / estimate_s(plans, plan, name, timing)
            )
    return {k: round(float(np.mean(v)), 2) for k, v in ratios.items()}


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
