"""What every adapter method declares to the transform, so the transform needs no special cases.

A method is a frozen dataclass of hyperparameters with `init`, `apply` and `delta`
(docs/design.md). Subclassing `Method` gives it the declarations below at their common
values; a method that differs sets the class attribute, and the transform reads it.
"""

from __future__ import annotations

from typing import ClassVar


class Method:
    """Base of the adapter methods: the transform's questions about a method, answered.

    uses_layer_output: `apply` takes `xk=x @ K` (the layer's own product, bias left out), so
        the factored call reuses it instead of a second pass over the frozen kernel (DoRA).
    merge_loses: what `K + ΔK` no longer determines, so `unmerge` refuses (DoRA: its
        column scale); None when `unmerge` can subtract ΔK.
    trains_kernel: the kernel itself moves into the adapters and trains (full fine-tuning);
        `init` / `apply` / `delta` are then never called by the transform.
    """

    uses_layer_output: ClassVar[bool] = False
    merge_loses: ClassVar[str | None] = None
    trains_kernel: ClassVar[bool] = False
