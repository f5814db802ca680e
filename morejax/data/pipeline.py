"""Batches for training and evaluation: one constructor for every kind of batch.

The jobs live in their own modules: ``collate`` (examples to padded encoder or decoder
batches, and what each batch holds), ``packing`` (several short encoder examples per row),
``batching`` (order, process sharding, prefetch and exact resume); ``morejax.vocab`` holds
the tokenizer conventions they share. ``batches`` puts a collator and an iterator together.
"""

from __future__ import annotations

import inspect

import numpy as np

from morejax.data.batching import BatchIterator

__all__ = ["batches", "count_tokens"]

_ITERATION_OPTIONS = frozenset(inspect.signature(BatchIterator).parameters) - {
    "source",
    "collate",
    "length_fn",
}


def batches(source, tokenizer, collator: type, **options) -> BatchIterator:
    """Batches of ``source`` made by ``collator(tokenizer, ...)``.

    ``collator`` is ``collate.EncoderCollator`` (GLUE examples; options ``max_len``,
    ``buckets``, ``pad_id``, ``num_labels``, ``label_dtype``), ``packing.PackedEncoderCollator``
    (the same plus ``group_size``, see ``packing.group_size``), ``collate.DecoderCollator``
    (prompt/response examples; ``max_len``, ``buckets``, ``pad_id``, ``eos_id``,
    ``add_special_tokens``) or ``chat.ChatCollator``. ``BatchIterator``'s options
    (``batch_size``, ``seed``, ``shuffle``, ``epochs``, ``drop_remainder``, ``state``,
    ``group_by_length`` ...) go to it, the rest to the collator. Its defaults train:
    shuffled, the remainder dropped; evaluation passes ``shuffle=False, epochs=1,
    drop_remainder=False`` (the last batch completed with ``valid=0`` rows).
    ``group_by_length`` sorts by the collator's ``text_length``.
    """
    iteration = {k: options.pop(k) for k in list(options) if k in _ITERATION_OPTIONS}
    collate = collator(tokenizer, **options)
    return BatchIterator(source, collate, length_fn=collate.text_length, **iteration)


def count_tokens(batch: dict[str, np.ndarray], key: str = "attention_mask") -> int:
    """Real (non-pad) tokens in a batch, rows marked invalid excluded: for tokens/s.

    ``key='loss_mask'`` counts the tokens a decoder is trained on instead. Leading axes
    (a vectorised run's members) are counted too.
    """
    if "lengths" in batch and key == "attention_mask":  # packed: rows mix examples
        lengths = np.asarray(batch["lengths"])
        return int((lengths * np.asarray(batch.get("valid", 1))).sum())
    mask = np.asarray(batch[key])
    if "valid" in batch:
        mask = mask * np.asarray(batch["valid"])[..., None]
    return int(mask.sum())
