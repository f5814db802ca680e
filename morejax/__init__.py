"""morejax: parameter-efficient fine-tuning as pure functions over Flax parameter pytrees."""

from morejax import (
    _platforms,  # noqa: F401  (first: it picks JAX's backends before one starts)
    paths,
    subspace,
)
from morejax.methods import DoRA, Full, LoRA, MiLoRA, MoRe, MoReMinor, PiSSA
from morejax.transform import (
    ALL_LINEAR,
    PRESETS,
    Adapter,
    Layout,
    adapt,
    call,
    cast,
    count_params,
    kernel_layout,
    merge,
    nnx_call,
    nnx_split,
    plan,
    summarize,
    unmerge,
)

__all__ = [
    "ALL_LINEAR",
    "PRESETS",
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
    "kernel_layout",
    "merge",
    "nnx_call",
    "nnx_split",
    "paths",
    "plan",
    "subspace",
    "summarize",
    "unmerge",
]
