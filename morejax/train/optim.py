"""The optimizer: AdamW over the adapters, warmup then decay, per-group learning rates."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax

from morejax import paths


def schedule_shape(opt, total_steps: int):
    """The learning-rate factor per update: linear warmup to 1, then linear/cosine/constant."""
    if opt.schedule not in ("linear", "cosine", "constant"):
        raise ValueError(f"schedule must be linear, cosine or constant, got {opt.schedule!r}")
    warmup = opt.warmup_steps
    if warmup is None:
        warmup = int(math.ceil(opt.warmup_ratio * total_steps))
    decay_steps, end = max(1, total_steps - warmup), opt.end_factor

    def shape(count):
        c = jnp.asarray(count, jnp.float32)
        t = jnp.clip((c - warmup) / decay_steps, 0.0, 1.0)
        if opt.schedule == "linear":
            decay = 1.0 - (1.0 - end) * t
        elif opt.schedule == "cosine":
            decay = end + (1.0 - end) * 0.5 * (1.0 + jnp.cos(jnp.pi * t))
        else:
            decay = jnp.ones_like(t)
        return jnp.where(c < warmup, c / max(warmup, 1), decay)

    return shape


def make_optimizer(opt, total_steps: int, adapters) -> optax.GradientTransformation:
    """AdamW over the adapters; the peak learning rate is an injected (vmappable) hyperparameter.

    Clipping sees only adapter gradients (nothing else is differentiated). Leaves matching
    `no_decay` skip weight decay; `lr_groups` scales the updates of leaves matching each
    regex (first match wins).
    """
    shape = schedule_shape(opt, total_steps)
    no_decay = paths.compile_patterns(opt.no_decay or ())
    decay_mask = jax.tree_util.tree_map_with_path(
        lambda kp, _: not paths.matches_any(paths.path_str(kp), no_decay), adapters
    )
    groups = [(paths.compile_patterns(p), float(m)) for p, m in (opt.lr_groups or {}).items()]

    def group_of(kp, _):
        hits = [
            i for i, (pats, _) in enumerate(groups) if paths.matches_any(paths.path_str(kp), pats)
        ]
        return f"g{hits[0]}" if hits else "rest"

    def build(learning_rate):
        parts = []
        if opt.clip_norm:
            parts.append(optax.clip_by_global_norm(opt.clip_norm))
        parts.append(optax.scale_by_adam(b1=opt.b1, b2=opt.b2, eps=opt.eps))
        if opt.weight_decay:
            parts.append(optax.add_decayed_weights(opt.weight_decay, mask=decay_mask))
        if groups:
            scales = {f"g{i}": optax.scale(m) for i, (_, m) in enumerate(groups)}
            scales["rest"] = optax.identity()
            labels = jax.tree_util.tree_map_with_path(group_of, adapters)
            parts.append(optax.partition(scales, labels))
        parts.append(optax.scale_by_schedule(lambda count: -learning_rate * shape(count)))
        return optax.chain(*parts)

    return optax.inject_hyperparams(build)(learning_rate=opt.learning_rate)
