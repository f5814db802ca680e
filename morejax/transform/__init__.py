"""The transform: adapt a model's dense kernels, and run it factored or merged.

`adapt` splits a parameter tree into a frozen `base` and a small `adapters`
tree (adapter factors plus any leaves that train fully). `call` runs a Flax
Linen apply function with both: factored (the default, `x @ K + Δy(x)`, so the
backward pass never forms a full weight gradient) or merged (`K + ΔK`, works
for any function of the params). NNX models go through `nnx_split` / `nnx_call`.

One module per job: `adapter` (an adapted kernel and its matrix view), `targets` (which
kernels a rule adapts, the named targets), `adapting` (adapt, merge, unmerge, cast),
`linen` and `nnx` (running a model with adapters), `summary` (parameter counts and tables).
"""

from morejax.transform.adapter import Adapter, Layout, is_adapter
from morejax.transform.adapting import adapt, cast, merge, unmerge
from morejax.transform.linen import ADAPTER_SUFFIX, call, kernel_layout
from morejax.transform.nnx import nnx_call, nnx_split
from morejax.transform.summary import (
    ParamRow,
    ParamSummary,
    count_params,
    summarize,
)
from morejax.transform.targets import ALL_LINEAR, HEAD_PATTERN, PRESETS, plan

__all__ = [
    "ADAPTER_SUFFIX",
    "ALL_LINEAR",
    "HEAD_PATTERN",
    "PRESETS",
    "Adapter",
    "Layout",
    "ParamRow",
    "ParamSummary",
    "adapt",
    "call",
    "cast",
    "count_params",
    "is_adapter",
    "kernel_layout",
    "merge",
    "nnx_call",
    "nnx_split",
    "plan",
    "summarize",
    "unmerge",
]
