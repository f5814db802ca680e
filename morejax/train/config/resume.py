"""Which config changes matter to a run made before: resuming it, scoring it, keying a sweep.

One table says what changing a field does to such a run: `SAFE` fields change neither the
training trajectory nor the results' meaning (a resumed run ignores them); `SHAPE` fields
decide the saved trees' shapes (a checkpoint that does not fit is explained by them). Every
other field changes the trajectory: a resumed run names it and stops unless allowed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

SAFE, SHAPE = "safe", "shape"
FIELD_EFFECTS = {
    "name": SAFE,
    "log_every": SAFE,
    "eval_every": SAFE,
    "eval_at_start": SAFE,
    "checkpoint_every": SAFE,
    "data.num_threads": SAFE,
    "data.eval_batch_size": SAFE,
    "model.name": SHAPE,
    "adapter.__fn__": SHAPE,
    "adapter.rank": SHAPE,
    "adapter.nblocks": SHAPE,
    "adapter.block_out": SHAPE,
    "targets": SHAPE,
    "rules": SHAPE,
    "trainable": SHAPE,
    "exclude": SHAPE,
    "vmap_seeds": SHAPE,
    "vmap_learning_rates": SHAPE,
    "optimizer.clip_norm": SHAPE,
    "optimizer.weight_decay": SHAPE,
    "optimizer.lr_groups": SHAPE,
}
RESUME_SAFE = tuple(k for k, effect in FIELD_EFFECTS.items() if effect == SAFE)
SHAPE_FIELDS = tuple(k for k, effect in FIELD_EFFECTS.items() if effect == SHAPE)


# Fields added after runs and results were recorded, at the value that reproduces them: a
# record without the field had this value. Left out of sweep keys and resume checks, so that
# adding a field orphans no finished point and fails no resumed run.
NEUTRAL_DEFAULTS = {
    "data.allow_test_overlap": False,
    "data.train": None,
    "data.validation": None,
    "data.test": None,
    "data.text": None,
    "data.label": None,
    "data.task_type": None,
    "data.classes": None,
    "data.metric": None,
    "data.validation_fraction": 0.1,
    "data.chat_template": None,
    "data.exact_match": False,
    "data.answer_regex": None,
    "mesh.sharding": "auto",
}


def without_neutral(resolved: Mapping) -> dict:
    """The `to_json` form less the fields at their NEUTRAL_DEFAULTS value."""
    return {
        k: v
        for k, v in resolved.items()
        if not (k in NEUTRAL_DEFAULTS and v == NEUTRAL_DEFAULTS[k])
    }


def changed_fields(old: Mapping, new: Mapping, ignore: Iterable[str] = RESUME_SAFE) -> list[str]:
    """`path: old -> new` per field (`to_json` form) where `new` changes a run made with `old`,
    `ignore`d fields left out; none when either is unknown (empty)."""
    if not (old and new):
        return []
    old, new = without_neutral(old), without_neutral(new)
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k) and k not in ignore)
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys]


def changes(old: Mapping, new: Mapping) -> str:
    """The `changed_fields` that matter to a resumed or evaluated run, as one line."""
    changed = changed_fields(old, new)
    more = f" (+{len(changed) - 8} more)" if len(changed) > 8 else ""
    return ", ".join(changed[:8]) + more
