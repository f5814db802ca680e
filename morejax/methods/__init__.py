"""Adapter methods: frozen dataclasses with init / apply (factored Δy) / delta (ΔK), and the
registry that names them for configs, `--set` values and tables.

A new method is one module here and one `REGISTRY` line; the transform reads what the
method declares (`base.Method`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from morejax.methods.base import Method
from morejax.methods.dora import DoRA
from morejax.methods.full import Full
from morejax.methods.lora import LoRA
from morejax.methods.more import MoRe
from morejax.methods.more_minor import MoReMinor
from morejax.methods.svd import MiLoRA, PiSSA

__all__ = [
    "DoRA",
    "Full",
    "LoRA",
    "Method",
    "MiLoRA",
    "MoRe",
    "MoReMinor",
    "PiSSA",
    "Entry",
    "REGISTRY",
    "at_budget",
    "classes",
]


@dataclasses.dataclass(frozen=True)
class Entry:
    """One method as configs and tables name it.

    budget(rank): the hyperparameters that give it the parameter count of a rank-`rank` LoRA
    on the same kernels (MoRe: 4 blocks of that rank, r·nb·(p+s) ≈ r·(d_in+d_out); DoRA adds
    its d_out magnitudes; Full trains the kernels, whatever the rank).
    """

    cls: type
    label: str
    budget: Callable[[int], dict[str, Any]]


def _low_rank(rank: int) -> dict[str, Any]:
    # alpha = 2r: the LLM-Adapters / DoRA recipe.
    return {"rank": rank, "alpha": 2.0 * rank}


def _svd(rank: int) -> dict[str, Any]:
    # alpha None (= r, scale 1): PiSSA's and MiLoRA's official code.
    return {"rank": rank, "alpha": None}


def _monarch(rank: int) -> dict[str, Any]:
    return {"nblocks": 4, "rank": rank}


REGISTRY: dict[str, Entry] = {
    "full": Entry(Full, "Full", lambda rank: {}),
    "lora": Entry(LoRA, "LoRA", _low_rank),
    "dora": Entry(DoRA, "DoRA", _low_rank),
    "pissa": Entry(PiSSA, "PiSSA", _svd),
    "milora": Entry(MiLoRA, "MiLoRA", _svd),
    "more": Entry(MoRe, "MoRe", _monarch),
    "more_minor": Entry(MoReMinor, "MoReMinor", _monarch),
}


def at_budget(name: str, rank: int, **settings) -> tuple[type, dict[str, Any]]:
    """(class, keyword arguments) of method `name` at the budget of a rank-`rank` LoRA.

    `settings` (dropout, residual_dtype, nblocks, ...) set the fields the method has and are
    skipped by one that lacks them, so one call serves every method of a table.
    """
    if name not in REGISTRY:
        raise ValueError(f"unknown method {name!r}; use one of {', '.join(REGISTRY)}")
    entry = REGISTRY[name]
    fields = {f.name for f in dataclasses.fields(entry.cls)}
    kwargs = entry.budget(rank)
    kwargs.update({k: v for k, v in settings.items() if k in fields})
    return entry.cls, kwargs


def classes() -> dict[str, type]:
    """Method classes by class name: what a `--set adapter=LoRA(rank=8)` value may call."""
    return {entry.cls.__name__: entry.cls for entry in REGISTRY.values()}
