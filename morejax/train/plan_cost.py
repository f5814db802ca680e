"""What a run costs by estimate: FLOPs by formula, a roofline step time on the chip, the run's
steps (from the config or the data's published size) and its chip-hours."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from morejax import paths
from morejax.train.config import Experiment
from morejax.train.loop import total_steps
from morejax.train.plan_chips import Chip
from morejax.train.plan_programs import Program
from morejax.train.setup import Shapes

# Published training-set sizes of the paper recipes' data (records; the reasoning mixtures'
# sizes are the nominal ones of their names). `--examples` gives another.
GLUE_TRAIN = {  # tensorflow.org/datasets/community_catalog/huggingface/glue
    "cola": 8551,
    "sst2": 67349,
    "mrpc": 3668,
    "qqp": 363846,
    "stsb": 5749,
    "mnli": 392702,
    "qnli": 104743,
    "rte": 2490,
    "wnli": 635,
}
REASONING_TRAIN = {"commonsense_170k": 170_000, "math_10k": 10_000}


def model_flops(exp: Experiment, sh: Shapes) -> float:
    """FLOPs of one training step on the whole slice by formula: forward 2·T·(frozen matmul
    weights + adapter weights) + attention 4·T·L·width·layers; backward the same again through
    the activations, plus 2·T·trainable for the trainable weights' gradients (T tokens)."""
    tokens = exp.batch_size * exp.data.max_len * (sh.n_members or 1)
    flat = jax.tree_util.tree_flatten_with_path(sh.base)[0]
    frozen = sum(x.size for kp, x in flat if paths.path_str(kp).endswith("kernel"))
    cfg = sh.model.config
    if getattr(cfg, "tie_embeddings", False):  # the embedding is also the output layer
        frozen += cfg.vocab_size * cfg.hidden_size
    trainable = sum(x.size for x in jax.tree.leaves(sh.member))
    width = cfg.num_heads * getattr(cfg, "head_dim", cfg.hidden_size // cfg.num_heads)
    attention = 4 * tokens * exp.data.max_len * width * cfg.num_layers
    forward = 2 * tokens * (frozen + trainable) + attention
    return float(2 * forward + 2 * tokens * trainable)


@dataclasses.dataclass
class Speed:
    """The training step's estimated time on the chip (a roofline: no communication)."""

    xla_flops: float  # per chip per step, XLA's count (loop bodies times their trips)
    model_flops: float  # per chip per step, by formula
    compute_s: float
    memory_s: float
    step_s: float
    tokens_per_step: int
    tokens_per_s: float
    steps: int
    chip_hours: float


def speed(exp: Experiment, sh: Shapes, chip: Chip, train: Program, chips: int, steps: int):
    # XLA counts a loop body once: the micro-batch loop runs it micro_batches times.
    trips = exp.micro_batches if exp.micro_batches > 1 else 1
    xla = train.flops * trips
    formula = model_flops(exp, sh) / chips
    compute_s = max(xla, formula) / chip.peak_bf16
    memory_s = train.bytes_accessed * trips / chip.hbm_bandwidth
    step_s = max(compute_s, memory_s)
    tokens = exp.batch_size * exp.data.max_len * (sh.n_members or 1)
    return Speed(
        xla,
        formula,
        compute_s,
        memory_s,
        step_s,
        tokens,
        tokens / step_s,
        steps,
        steps * step_s * chips / 3600,
    )


def run_steps(exp: Experiment, examples: int | None) -> tuple[int, str]:
    """(optimizer steps of the whole run, how they were counted)."""
    if exp.steps:
        return int(exp.steps), f"steps={exp.steps}"
    n = examples
    if n is None:
        table = GLUE_TRAIN if exp.data.kind == "glue" else REASONING_TRAIN
        n = table.get(exp.data.task)
    if n is None:
        raise ValueError(
            f"how many training examples has {exp.data.task!r}? pass --examples N "
            "(or set steps) to count the run's steps"
        )
    if exp.data.train_limit:
        n = min(n, exp.data.train_limit)
    return total_steps(exp, n), f"{exp.epochs:g} epochs x {n:,} examples / {exp.batch_size}"


def model_bytes(params, base_dtype: str) -> float:
    """The model's bytes with its floating leaves in `base_dtype`."""
    itemsize = jnp.dtype(base_dtype).itemsize
    return float(
        sum(
            x.size * (itemsize if jnp.issubdtype(x.dtype, jnp.floating) else x.dtype.itemsize)
            for x in jax.tree.leaves(params)
        )
    )
