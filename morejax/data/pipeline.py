"""Batches for training and evaluation: one constructor for every kind of batch.

The jobs live in their own modules: ``collate`` (examples to padded encoder or decoder
batches, and what each batch holds), ``packing`` (several short encoder examples per row),
``batching`` (order, process sharding, prefetch and exact resume); ``morejax.vocab`` holds
the tokenizer conventions they share. ``batches`` puts a collator and an iterator together.
"""

from __future__ import annotations

import numpy as np

from morejax.data.batching import BatchIterator

__all__ = ["batches", "count_tokens"]


def batches(
    source,
    tokenizer,
    collator: type,
    *,
    batch_size: int,
    seed: int = 0,
    shuffle: bool = True,
    epochs: int | None = 1,
    drop_remainder: bool = True,
    process_index: int | None = None,
    process_count: int | None = None,
    num_threads: int = 1,
    prefetch: int = 2,
    state: dict | None = None,
    group_by_length: int = 0,
    **options,
) -> BatchIterator:
    """Batches of ``source`` made by ``collator(tokenizer, **options)``.

    ``collator`` is ``collate.EncoderCollator`` (GLUE examples; options ``max_len``,
    ``buckets``, ``pad_id``, ``num_labels``, ``label_dtype``), ``packing.PackedEncoderCollator``
    (the same plus ``group_size``, see ``packing.group_size``), ``collate.DecoderCollator``
    (prompt/response examples; ``max_len``, ``buckets``, ``pad_id``, ``eos_id``,
    ``add_special_tokens``) or ``chat.ChatCollator``. The defaults train: shuffled, the
    remainder dropped; evaluation passes ``shuffle=False, epochs=1, drop_remainder=False``
    (the last batch completed with ``valid=0`` rows). The rest is ``BatchIterator``'s;
    ``group_by_length`` sorts by the collator's ``text_length``.
    """
    collate = collator(tokenizer, **options)
    return BatchIterator(
        source,
        collate,
        batch_size=batch_size,
        seed=seed,
        shuffle=shuffle,
        epochs=epochs,
        drop_remainder=drop_remainder,
        process_index=process_index,
        process_count=process_count,
        num_threads=num_threads,
        prefetch=prefetch,
        state=state,
        group_by_length=group_by_length,
        length_fn=collate.text_length,
    )


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
