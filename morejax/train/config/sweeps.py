"""Sweeps: a config file's `sweep()` points, the helpers that write them, a point's name."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import fiddle as fdl

from morejax.train.config.loading import load_module


def sweep_points(path: str | Path) -> list[dict]:
    """The override dicts of a config file's `sweep()`; [{}] when it defines none."""
    module = load_module(path)
    if not hasattr(module, "sweep"):
        return [{}]
    points = [dict(p) for p in module.sweep()]
    return points or [{}]


def product(**axes: Iterable) -> list[dict]:
    """All combinations of the axes: `product(**{'adapter.rank': [4, 8], 'seed': [0, 1]})`."""
    keys = list(axes)
    return [dict(zip(keys, vals)) for vals in itertools.product(*(list(axes[k]) for k in keys))]


def zipped(**axes: Iterable) -> list[dict]:
    """Axes walked together (equal lengths)."""
    keys, cols = list(axes), [list(v) for v in axes.values()]
    if len({len(c) for c in cols}) > 1:
        raise ValueError(
            f"zipped axes differ in length: { {k: len(c) for k, c in zip(keys, cols)} }"
        )
    return [dict(zip(keys, vals)) for vals in zip(*cols)]


def point_name(overrides: Mapping[str, Any]) -> str:
    """A folder-safe name for one sweep point."""
    if not overrides:
        return "default"
    parts = [f"{k.split('.')[-1]}={_short(v)}" for k, v in overrides.items()]
    name = ",".join(parts)
    return re.sub(r"[^A-Za-z0-9_.,=+-]", "_", name)


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, fdl.Buildable):
        return fdl.get_callable(v).__name__
    return str(v)
