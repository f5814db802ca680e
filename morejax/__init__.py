"""morejax: parameter-efficient fine-tuning as pure functions over Flax parameter pytrees."""

from morejax import paths
from morejax.methods import DoRA, Full, LoRA, MiLoRA, MoRe, MoReMinor, PiSSA
from morejax.transform import (
    ALL_LINEAR,
    Adapter,
    Layout,
    adapt,
    call,
    cast,
    count_params,
    count_trainable,
    kernel_layout,
    merge,
    nnx_call,
    nnx_split,
    param_table,
    plan,
    summarize,
    unmerge,
)

__all__ = [
    "ALL_LINEAR",
    "Adapter",
    "DoRA",
    "Full",
    "Layout",
    "LoRA",
    "MiLoRA",
    "MoRe",
    "MoReMinor",
    "PiSSA",
    "adapt",
    "call",
    "cast",
    "count_params",
    "count_trainable",
    "kernel_layout",
    "merge",
    "nnx_call",
    "nnx_split",
    "param_table",
    "paths",
    "plan",
    "summarize",
    "unmerge",
]
