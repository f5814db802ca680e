"""Full fine-tuning of a kernel: the kernel itself becomes a trainable leaf.

The transform moves the kernel out of the frozen base into the adapters, so
optimiser masks and weight decay see it exactly as in ordinary fine-tuning.
The `init/apply/delta` triple below states that contract in method form.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from morejax.methods.base import Method


@dataclasses.dataclass(frozen=True)
class Full(Method):
    trains_kernel = True

    def init(self, key, kernel):
        del key
        return {"kernel": kernel}, jnp.zeros_like(kernel)

    def apply(self, params, x, kernel=None, *, rng=None):
        return x @ params["kernel"].astype(x.dtype)

    def delta(self, params, kernel=None):
        return params["kernel"]
