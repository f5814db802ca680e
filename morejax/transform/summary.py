"""How many parameters an adapted model trains, and where: `summarize` and its table."""

from __future__ import annotations

import dataclasses
import math
import re

import jax

from morejax.paths import flatten_keys, path_str
from morejax.transform.adapter import Adapter, adapter_items


def count_params(tree) -> int:
    """Number of scalars in a tree of arrays or ShapeDtypeStructs (works under eval_shape)."""
    return sum(math.prod(getattr(x, "shape", ())) for x in jax.tree.leaves(tree))


@dataclasses.dataclass(frozen=True)
class ParamRow:
    path: str
    shape: tuple
    method: str
    trainable: int


@dataclasses.dataclass(frozen=True)
class ParamSummary:
    rows: tuple[ParamRow, ...]
    adapter_params: int  # factors of adapted kernels (what papers report)
    other_trainable: int  # heads, norms, fully trained kernels
    base_params: int  # the frozen model

    @property
    def trainable(self) -> int:
        return self.adapter_params + self.other_trainable

    @property
    def model_params(self) -> int:
        """Size of the original model (adapters of Full/trainable leaves counted once)."""
        return self.base_params + self.other_trainable

    def table(self) -> str:
        """One row per adapted or trainable leaf (layers in numeric order), then the totals."""
        w = max([len(r.path) for r in self.rows] + [4])
        m = max([len(r.method) for r in self.rows] + [6])
        lines = [f"{'path':<{w}}  {'shape':<22} {'method':<{m}} {'trainable':>12}"]
        for r in sorted(self.rows, key=lambda r: _natural(r.path)):
            lines.append(f"{r.path:<{w}}  {str(r.shape):<22} {r.method:<{m}} {r.trainable:>12,}")
        return "\n".join(lines + ["", self.totals()])

    def totals(self) -> str:
        pct = 100.0 * self.adapter_params / max(self.model_params, 1)
        return "\n".join(
            [
                f"adapter params:        {self.adapter_params:>15,}  ({pct:.3f}% of the model)",
                f"other trainable:       {self.other_trainable:>15,}  (heads, norms, full kernels)",
                f"model params:          {self.model_params:>15,}",
            ]
        )

    def __str__(self) -> str:
        return self.table()


def _natural(path: str) -> list:
    """A sort key that puts layers_2 before layers_10."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path)]


def summarize(base, adapters) -> ParamSummary:
    """What was adapted and how many parameters train; shapes suffice (use under eval_shape)."""
    flat_base = flatten_keys(base)
    rows, adapter_n, other_n = [], 0, 0
    for path, a in adapter_items(adapters):
        if isinstance(a, Adapter):
            n = count_params(a.params)
            adapter_n += n
            shape = tuple(flat_base[path].shape)
            rows.append(ParamRow(path_str(path), shape, _method_str(a.method), n))
        else:
            n = count_params(a)
            other_n += n
            rows.append(ParamRow(path_str(path), tuple(a.shape), "trainable", n))
    return ParamSummary(tuple(rows), adapter_n, other_n, count_params(base))


def _method_str(method) -> str:
    fields = ", ".join(f"{f.name}={getattr(method, f.name)}" for f in dataclasses.fields(method))
    return f"{type(method).__name__}({fields})"
