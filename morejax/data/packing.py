"""Packing: several short encoder examples per row, so short-sentence tasks stop paying
for padding (SST-2 averages ~13 tokens an example)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from morejax.data.collate import EncoderCollator, bucket_of, copy_idx

__all__ = ["PackedEncoderCollator", "group_size", "pack_rows", "row_buckets"]


def group_size(batch_size: int, groups: int) -> int:
    """Examples per packing group when a global batch packs in ``groups`` groups (one per
    micro-batch and data shard, so a group never straddles devices)."""
    if groups < 1 or batch_size % groups:
        raise ValueError(f"batch_size {batch_size} does not split into {groups} packing groups")
    return batch_size // groups


def row_buckets(limit: int = 1 << 16) -> tuple[int, ...]:
    """Allowed rows per packing group: every count to 8, then steps of 1/8 of the next power
    of two (10, 12, .., 16, 20, .., 32, 40, ..), so a bucket wastes at most ~12% of its rows
    while a run compiles only a handful of shapes."""
    out, step, top = list(range(1, 9)), 2, 16
    while out[-1] < limit:
        out.extend(range(out[-1] + step, top + 1, step))
        step, top = step * 2, top * 2
    return tuple(out)


def pack_rows(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """First-fit decreasing: example indices per row, rows of ``capacity`` tokens."""
    rows: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for r, room in enumerate(free):
            if lengths[i] <= room:
                rows[r].append(i)
                free[r] -= lengths[i]
                break
        else:
            rows.append([i])
            free.append(capacity - lengths[i])
    return rows


class PackedEncoderCollator(EncoderCollator):
    """Several short examples per row of ``max_len`` tokens, so short-sentence tasks stop
    paying for padding (SST-2 averages ~13 tokens an example).

    Examples are packed in groups of ``group_size`` (one group per micro-batch and data
    shard, so a group never straddles devices); each group gets the same number of rows,
    the row bucket (``row_buckets``) of its fullest group. Per token: ``segment_ids``
    (1, 2, .. per example in its row, 0 on padding; attention stays within a segment) and
    ``position_ids`` (restarting at 0 per example). Per example, ``(groups, group_size)``:
    ``cls_index``, the flat position ``row_in_group * max_len + start`` of its first token
    within its group's rows; ``labels``, ``lengths`` (tokens) are ``(groups * group_size,)``
    in example order. ``length(examples)`` and ``buckets`` count rows, not tokens, so
    ``BatchIterator`` / ``StackedBatches`` agree on one shape as with padding.
    """

    def __init__(self, tokenizer, *, group_size: int, max_len: int = 128, **kwargs):
        kwargs.pop("buckets", None)  # token buckets do not apply: rows are max_len long
        super().__init__(tokenizer, max_len=max_len, **kwargs)
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        self.group_size = int(group_size)
        self.buckets = row_buckets()

    def _groups(self, n: int) -> range:
        if n % self.group_size:
            raise ValueError(
                f"{n} examples do not split into packing groups of {self.group_size} "
                "(the batch per process must be a multiple of micro_batches x data shards)"
            )
        return range(0, n, self.group_size)

    def _packs(self, encodings) -> list[list[list[int]]]:
        g = self.group_size
        return [
            pack_rows([len(x.ids) for x in encodings[s : s + g]], self.max_len)
            for s in self._groups(len(encodings))
        ]

    def length(self, examples: Sequence[dict]) -> int:
        """Rows the fullest group of these examples needs."""
        return max(len(p) for p in self._packs(self._encode(examples)))

    def __call__(self, examples: Sequence[dict], length: int | None = None) -> dict:
        """Packed rows, each group padded to the row bucket of ``length`` when given (the
        global batch's ``length``), else of these examples' fullest group."""
        encodings = self._encode(examples)
        packs = self._packs(encodings)
        rows = bucket_of(max(len(p) for p in packs), length, self.buckets)
        g, L = self.group_size, self.max_len
        shape = (len(packs) * rows, L)
        ids = np.full(shape, self.pad_id, np.int32)
        types, segments, positions = (np.zeros(shape, np.int32) for _ in range(3))
        cls_index = np.zeros((len(packs), g), np.int32)
        for group, pack in enumerate(packs):
            for r, members in enumerate(pack):
                row, at = group * rows + r, 0
                for segment, e in enumerate(members, 1):
                    x = encodings[group * g + e]
                    n = len(x.ids)
                    ids[row, at : at + n] = x.ids
                    types[row, at : at + n] = x.type_ids
                    segments[row, at : at + n] = segment
                    positions[row, at : at + n] = np.arange(n)
                    cls_index[group, e] = r * L + at
                    at += n
        batch = {
            "input_ids": ids,
            "attention_mask": (segments > 0).astype(np.int32),
            "token_type_ids": types,
            "segment_ids": segments,
            "position_ids": positions,
            "cls_index": cls_index,
            "lengths": np.asarray([len(x.ids) for x in encodings], np.int32),
            "labels": self._labels(examples),
        }
        copy_idx(examples, batch)
        return batch
