# python -m morejax.cli train configs/glue_table_minilm.py --set task=cola --set method=lora
"""One cell of the small-scale GLUE comparison table (`experiments/glue_table.py` runs them
all): MiniLM-L6 on CoLA, SST-2 or RTE with full fine-tuning, LoRA, DoRA, PiSSA, MiLoRA or
MoRe (`--set task=... --set method=...`).

Fairness: every method adapts the same kernels, query/key/value of all 6 layers (18 matrices
384x384), and trains the same fresh classification head (148,610 params, not counted) at the
method's learning rate. Budgets are equal, not merely comparable: LoRA / DoRA / PiSSA /
MiLoRA at r=8 and MoRe at nb=4, r=8 all have 8 * (384 + 384) = 6,144 params per matrix,
110,592 in all (DoRA adds its 384 magnitudes per matrix: 117,504); `full` trains the 18
kernels themselves (2,654,208). `morejax params configs/glue_table_minilm.py --set
method=NAME` prints them. LoRA and DoRA use alpha = 2r; PiSSA and MiLoRA alpha = r (their
official scaling 1); no adapter dropout.

CPU sizing (2 shared cores, measured in `results/glue_small.md`): batch 32, AdamW wd 0.001,
cosine with 6% warmup, dev score every steps/6 (best kept): CoLA 300 steps (1.1 epochs)
and SST-2 300 steps (0.14 epochs) in packed rows of 64 tokens (random batches, as the main
job), RTE 150 steps of batch 16 (1 epoch, length 128), length-grouped batches padded to a
few bucket lengths. `python experiments/glue_table.py --dry-run` estimates how long the
table takes.

Paper scale (RoBERTa-large, the MoRe paper's per-task recipe: max length 128, its batch,
epochs, schedule; this file's methods, targets and learning-rate grids): `--set recipe=paper
--set model.name=roberta-large --set model.checkpoint=/path/to/roberta-large`.
"""

import fiddle as fdl

from configs import common

TASKS = ("cola", "sst2", "rte")
METHODS = ("full", "lora", "dora", "pissa", "milora", "more")
RANK = 8  # LoRA family rank; MoRe nb=4 with block rank RANK has the same count

# task: (steps, batch, max length) on the CPU
CPU = {"cola": (300, 32, 64), "sst2": (300, 32, 64), "rte": (150, 16, 128)}
PACKED = ("cola", "sst2")  # ~11 and ~13 tokens per example: packed rows of 64
BUCKETS = {"rte": (64, 96, 128)}  # sentence pairs of ~70 tokens: grouped, padded to buckets

# Peak learning rates tried per method on seed 0 (factor 3 apart around each method's usual
# optimum at this scale: SVD-initialised methods lower, as published studies find).
LR_GRID = {
    "full": (3e-5, 1e-4, 3e-4),
    "lora": (5e-4, 1.5e-3, 4.5e-3),
    "dora": (5e-4, 1.5e-3, 4.5e-3),
    "pissa": (1e-4, 3e-4, 1e-3),
    "milora": (3e-4, 1e-3, 3e-3),
    "more": (1e-3, 3e-3, 9e-3),
}
SEEDS = (0, 1, 2)


def adapter(method: str) -> fdl.Config:
    """The method at the table's shared budget."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return common.adapter(method, RANK)


def config(task: str = "cola", method: str = "more", recipe: str = "cpu"):
    from morejax.data import glue

    name = glue.spec(task).name
    if name not in CPU and recipe == "cpu":
        raise ValueError(f"the table's CPU recipe covers {TASKS}; got task {task!r}")
    cfg = common.glue_recipe(name, model=common.minilm_l6())
    cfg.name = f"glue-{name}-{method}-minilm"
    cfg.adapter = adapter(method)
    cfg.targets = common.QKV_BERT
    cfg.trainable = common.HEAD
    cfg.dropout = False
    cfg.optimizer.learning_rate = LR_GRID[method][1]
    if recipe == "paper":  # the MoRe paper's per-task batch / epochs / length (glue_recipe)
        cfg.eval_every = 0
        return cfg
    if recipe != "cpu":
        raise ValueError(f"recipe must be 'cpu' or 'paper', got {recipe!r}")
    steps, batch, max_len = CPU[name]
    cfg.data.max_len = max_len
    if name in PACKED:
        cfg.data.pack = True  # short sentences: several to a row; few step shapes
    else:
        cfg.data.buckets = BUCKETS[name]
        cfg.data.pipeline = {"group_by_length": 50}
    cfg.batch_size = batch
    cfg.epochs = None
    cfg.steps = steps
    cfg.eval_every = steps // 6
    cfg.checkpoint_every = steps // 6
    cfg.optimizer.schedule = "cosine"
    return cfg


def sweep():
    """Stage 1 of the table: every task and method at its learning rates, seed 0 (`morejax
    sweep --vectorize` runs each cell's rates as one program). `experiments/glue_table.py`
    then runs the other seeds at each cell's best rate."""
    return [
        {"task": t, "method": m, "optimizer.learning_rate": lr, "seed": SEEDS[0]}
        for t in TASKS
        for m in METHODS
        for lr in LR_GRID[m]
    ]
