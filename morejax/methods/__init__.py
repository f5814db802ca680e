"""Adapter methods: frozen dataclasses with init / apply (factored Δy) / delta (ΔK)."""

from morejax.methods.base import Method
from morejax.methods.dora import DoRA
from morejax.methods.full import Full
from morejax.methods.lora import LoRA
from morejax.methods.more import MoRe
from morejax.methods.more_minor import MoReMinor
from morejax.methods.svd import MiLoRA, PiSSA

__all__ = ["DoRA", "Full", "LoRA", "Method", "MiLoRA", "MoRe", "MoReMinor", "PiSSA"]
