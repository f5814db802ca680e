"""End-to-end fine-tuning on real SST-2: morejax's main job against Hugging Face PEFT with
its Trainer at its best CPU settings (dynamic padding, length-grouped batches), one after the
other in one run: real tokens per second and wall time (from process start, loading and
evaluation included) to fixed dev accuracies.

    python benchmarks/sst2_vs_peft.py                     # 900 steps each, dev every 100
    python benchmarks/sst2_vs_peft.py --steps 4 --eval-every 2 --train-limit 256 \
        --eval-limit 64 --no-record --variants main        # smoke (CI)

Both sides: MiniLM-L6 (the pip package), batch 32, AdamW with weight decay 0.001, peak lr
3e-3 with 6% warmup and cosine decay, fresh head and the pooler trained, float32, no
dropout on the morejax side. morejax runs `configs/glue_more_minilm.py` (the main job: MoRe
nb4 r4 on q,k,v, packed rows) with a cold compilation cache, again with the cache warm, with
the last layer run at every token (`full`: the main job before its last layer ran at [CLS]
only), and with PEFT's adapter (LoRA r8 on query/value, cold); `--variants` picks some of
these;
PEFT runs LoRA r8 on query/value, `modules_to_save=["classifier", "pooler"]`.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import write_section  # noqa: E402
from morejax.train.config import shared_dir  # noqa: E402

MAIN_JOB = ROOT / "configs" / "glue_more_minilm.py"
TARGETS = (0.80, 0.84, 0.85)
# key -> (row name, overrides), run in this order with one fresh compilation cache: the
# first run compiles everything (cold), the rerun loads the main job's programs (warm: what
# a second run of a config, another seed or a sweep point costs); the all-token variant and
# LoRA have programs of their own.
VARIANTS = {
    "main": ("morejax MoRe nb4 r4 q,k,v (main job), cold compile cache", []),
    "warm": ("morejax main job rerun, warm compile cache", []),
    "full": (
        "morejax main job, last layer at every token, cold compile cache",
        ["model.overrides={'cls_only_last_layer': False}"],
    ),
    "lora": (
        "morejax LoRA r8 q,v, cold compile cache",
        ["adapter=LoRA(rank=8, alpha=8.0)", "targets=.*/(query|value)/kernel"],
    ),
}


def read_tsv(path: Path, limit: int | None) -> list[tuple[str, int]]:
    with open(path, newline="") as f:
        rows = [(r["sentence"], int(r["label"])) for r in csv.DictReader(f, delimiter="\t")]
    return rows[:limit] if limit else rows


def time_to(curve: list[tuple[float, float]], target: float) -> float | None:
    """Seconds from process start to the first evaluation at or above `target`."""
    return next((t for t, acc in curve if acc >= target), None)


def run_morejax(args, sets: list[str], cache: Path) -> dict:
    env = dict(os.environ, MOREJAX_COMPILE_CACHE=str(cache))
    with tempfile.TemporaryDirectory() as tmp:
        overrides = [f"steps={args.steps}", f"eval_every={args.eval_every}"] + sets
        if args.train_limit:
            overrides.append(f"data.train_limit={args.train_limit}")
        if args.eval_limit:
            overrides.append(f"data.eval_limit={args.eval_limit}")
        cmd = [sys.executable, "-m", "morejax.cli", "train", str(MAIN_JOB), "--workdir", tmp]
        cmd += ["--no-progress"] + [a for s in overrides for a in ("--set", s)]
        start = time.time()
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        total = time.time() - start
        if proc.returncode:
            raise RuntimeError(f"morejax exited {proc.returncode}:\n{proc.stderr[-3000:]}")
        rows = [json.loads(x) for x in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["split"] == "train"]
    evals = [(r["time"] - start, r["accuracy"]) for r in rows if r["split"] == "eval"]
    # The first window holds the compiles; later windows are the steady rate.
    rates = [r["tokens_per_s"] for r in train[1:]] or [r["tokens_per_s"] for r in train]
    return {"tokens_per_s": statistics.median(rates), "curve": evals, "total_s": total}


def run_peft(args, sst2: Path) -> dict:
    start = time.time()
    import numpy as np
    import peft
    import torch
    from transformers import (
        AutoTokenizer,
        BertForSequenceClassification,
        DataCollatorWithPadding,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from morejax.models import registry

    torch.manual_seed(0)
    path = str(registry.find_model_dir("minilm-l6"))
    tok = AutoTokenizer.from_pretrained(path)
    model = BertForSequenceClassification.from_pretrained(path, num_labels=2)
    cfg = peft.LoraConfig(
        r=8,
        lora_alpha=8,
        target_modules=["query", "value"],
        modules_to_save=["classifier", "pooler"],
        task_type="SEQ_CLS",
    )
    model = peft.get_peft_model(model, cfg)

    def encode(rows):
        enc = tok([s for s, _ in rows], truncation=True, max_length=64)
        return [
            {"input_ids": i, "attention_mask": m, "labels": y}
            for i, m, (_, y) in zip(enc["input_ids"], enc["attention_mask"], rows)
        ]

    train = encode(read_tsv(sst2 / "train.tsv", args.train_limit))
    dev = encode(read_tsv(sst2 / "dev.tsv", args.eval_limit))
    curve, steps = [], []

    class Clock(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            steps.append([time.time(), None])

        def on_step_end(self, a, state, control, **kw):
            steps[-1][1] = time.time()

        def on_evaluate(self, a, state, control, metrics=None, **kw):
            curve.append((time.time() - start, metrics["eval_accuracy"]))

    def accuracy(pred):
        return {"accuracy": float((np.argmax(pred.predictions, -1) == pred.label_ids).mean())}

    with tempfile.TemporaryDirectory() as tmp:
        targs = TrainingArguments(
            output_dir=tmp,
            per_device_train_batch_size=32,
            per_device_eval_batch_size=128,
            max_steps=args.steps,
            learning_rate=3e-3,
            lr_scheduler_type="cosine",
            warmup_steps=max(1, round(0.06 * args.steps)),  # 6%, as morejax
            weight_decay=0.001,
            eval_strategy="steps",
            eval_steps=args.eval_every,
            save_strategy="no",
            logging_strategy="no",
            report_to=[],
            train_sampling_strategy="group_by_length",
            dataloader_num_workers=0,
            use_cpu=True,
            seed=0,
        )
        trainer = Trainer(
            model=model,
            args=targs,
            train_dataset=train,
            eval_dataset=dev,
            data_collator=DataCollatorWithPadding(tok),
            compute_metrics=accuracy,
            callbacks=[Clock()],
        )
        # Real tokens per step from the sampler's batches, counted as the Trainer draws them.
        loader = trainer.get_train_dataloader()
        counts = [int(b["attention_mask"].sum()) for b in loader][: args.steps]
        trainer.train()
    total = time.time() - start
    secs = [b - a for a, b in steps if b is not None]
    # Steady rate: tokens over step time, the first step (warm-up) left out.
    n = min(len(secs), len(counts))
    rate = sum(counts[1:n]) / max(sum(secs[1:n]), 1e-9) if n > 1 else counts[0] / secs[0]
    return {"tokens_per_s": rate, "curve": curve, "total_s": total}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=900)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--train-limit", type=int, default=None)
    p.add_argument("--eval-limit", type=int, default=None)
    p.add_argument("--no-record", action="store_true")
    p.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"comma-separated morejax runs, of {', '.join(VARIANTS)} (default: all)",
    )
    args = p.parse_args(argv)
    keys = [k for k in args.variants.split(",") if k]
    if unknown := sorted(set(keys) - set(VARIANTS)):
        p.error(f"unknown --variants {unknown}; choose from {', '.join(VARIANTS)}")
    # The same SST-2 folder the main job's config reads (MOREJAX_SHARED_DATA or ../shared).
    sst2 = shared_dir("glue", "SST-2")
    if sst2 is None:
        p.error("SST-2 not found under ../shared/data/glue (or $MOREJAX_SHARED_DATA/glue)")
    import torch

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    results = {"PEFT LoRA r8 q,v + Trainer": run_peft(args, Path(sst2))}
    print("PEFT done", flush=True)
    with tempfile.TemporaryDirectory() as cache:
        for name, sets in (VARIANTS[k] for k in keys):
            results[name] = run_morejax(args, sets, Path(cache))
            print(f"{name} done", flush=True)
    peft_rate = results["PEFT LoRA r8 q,v + Trainer"]["tokens_per_s"]
    cols = " | ".join(f"s to {t:.0%}" for t in TARGETS)
    lines = [
        f"SST-2 (../shared/data/glue), {args.steps} steps of batch 32, dev every "
        f"{args.eval_every} steps; seconds from process start (loading, compiling and "
        "evaluation included). Tokens/s: real (non-pad) training tokens per second of "
        "steady training.",
        "",
        f"| run | real tokens/s | vs PEFT | best dev acc. | {cols} | total s |",
        "|---|---|---|---|" + "---|" * len(TARGETS) + "---|",
    ]
    for name, r in results.items():
        best = max((a for _, a in r["curve"]), default=float("nan"))
        reach = " | ".join(
            "-" if (t := time_to(r["curve"], x)) is None else f"{t:.0f}" for x in TARGETS
        )
        lines.append(
            f"| {name} | {r['tokens_per_s']:.0f} | {r['tokens_per_s'] / peft_rate:.2f}x | "
            f"{best:.2%} | {reach} | {r['total_s']:.0f} |"
        )
    lines += ["", "Dev accuracy curves (seconds from start, accuracy):", ""]
    for name, r in results.items():
        pts = ", ".join(f"{t:.0f}s {a:.4f}" for t, a in r["curve"])
        lines.append(f"- {name}: {pts}")
    text = "\n".join(lines)
    print(text)
    if not args.no_record:
        print(f"wrote {write_section('SST-2 end to end against PEFT', text)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
