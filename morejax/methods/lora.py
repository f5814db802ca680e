"""LoRA: Δy = s · (dropout(x) @ A) @ B, with B = 0 at init so the model starts unchanged."""

from __future__ import annotations

import dataclasses
import math

from morejax.methods import _common
from morejax.methods.base import Method


@dataclasses.dataclass(frozen=True)
class LoRA(Method):
    rank: int = 8
    alpha: float = 8.0
    dropout: float = 0.0
    rslora: bool = False

    def __post_init__(self):
        _common.check_lowrank(self)

    @property
    def scale(self) -> float:
        return self.alpha / (math.sqrt(self.rank) if self.rslora else self.rank)

    def init(self, key, kernel):
        return _common.lowrank_init(self, key, kernel), kernel

    def apply(self, params, x, kernel=None, *, rng=None):
        x = _common.dropout(x, self.dropout, rng)
        return _common.lowrank_apply(params["A"], params["B"], x, self.scale)

    def delta(self, params, kernel=None):
        return _common.lowrank_delta(params["A"], params["B"], self.scale)
