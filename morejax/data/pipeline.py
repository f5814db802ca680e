"""Batching pipeline: batched tokenisation, bucketed padding, grain iteration with exact resume.

Batches are dicts of numpy arrays, all ``(B, L)`` or ``(B,)`` where ``B`` is this
process's share of the global batch and ``L`` one of a few bucket lengths (so jit
compiles a handful of shapes):

- encoder (GLUE examples ``{'text_a', 'text_b', 'label', 'idx'}``): ``input_ids``,
  ``attention_mask``, ``token_type_ids`` (0 for the first text, 1 for the second),
  ``labels`` (int32, or float32 for regression), ``idx`` when examples carry one;
- decoder (examples ``{'prompt', 'response'}``): ``input_ids`` = tokens of
  prompt + response + EOS, right-padded; ``attention_mask``; ``loss_mask`` (1 on the
  response and EOS tokens); ``labels`` equal to ``input_ids`` (unshifted, as in Hugging
  Face): the loss predicts ``labels[:, 1:]`` from ``logits[:, :-1]`` weighted by
  ``loss_mask[:, 1:]``;
- always: ``valid`` (int32, 0 on rows that only pad an evaluation remainder) and
  ``index`` (the row's position in the source, -1 on padding rows).

Order: global batch ``k`` of epoch ``e`` holds positions ``k*G ... k*G+G-1`` of a
permutation of the source that depends only on ``(seed, e)`` (grain's index
shuffle); process ``p`` of ``P`` gets rows ``p*G/P ... (p+1)*G/P - 1`` of it. The
batch sequence is a pure function of the step number, so the iterator's state is a
step counter and restoring it replays exactly, even on a different process count.

Padding: a batch pads to the bucket of the longest example of the whole global batch,
which every process can compute (it knows the global order), so with several processes
all of them build arrays of one shape (``jax.make_array_from_process_local_data``
needs that). ``StackedBatches`` stacks several members' iterators (one seed each) for a
vectorised run, padded to one common bucket per step.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from typing import Any

import grain
import numpy as np
from tokenizers import Tokenizer

from morejax.vocab import EOS_TOKENS, appended_eos_id

__all__ = [
    "make_buckets",
    "pick_bucket",
    "EncoderCollator",
    "PackedEncoderCollator",
    "pack_rows",
    "row_buckets",
    "DecoderCollator",
    "BatchIterator",
    "StackedBatches",
    "encoder_batches",
    "decoder_batches",
    "encoder_eval_batches",
    "decoder_eval_batches",
    "count_tokens",
]

_PAD_TOKENS = ("[PAD]", "<pad>", "<|pad|>", "<unk>")
_STATE_KEYS = ("epoch", "position", "seed")


# ----------------------------------------------------------------------------- buckets


def make_buckets(max_len: int, buckets: Sequence[int] | None = None, min_len: int = 32):
    """Sorted bucket lengths ending at ``max_len``: doubling from ``min_len`` by default;
    given buckets above ``max_len`` are dropped and ``max_len`` is always added."""
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    if buckets is None:
        buckets = []
        b = min_len
        while b < max_len:
            buckets.append(b)
            b *= 2
    if any(int(b) < 1 for b in buckets):
        raise ValueError(f"bucket lengths must be >= 1, got {list(buckets)}")
    return tuple(sorted({int(b) for b in buckets if b <= max_len} | {int(max_len)}))


def pick_bucket(length: int, buckets: Sequence[int]) -> int:
    """The smallest bucket that holds ``length`` tokens."""
    for b in buckets:
        if length <= b:
            return b
    raise ValueError(f"length {length} exceeds the largest bucket {buckets[-1]}")


# ----------------------------------------------------------------------------- tokenising


def _unwrap(tokenizer: Any) -> Tokenizer:
    """A ``tokenizers.Tokenizer``, or a wrapper holding one as ``.tokenizer``."""
    tok = tokenizer if isinstance(tokenizer, Tokenizer) else getattr(tokenizer, "tokenizer", None)
    if not isinstance(tok, Tokenizer):
        raise TypeError(f"expected a tokenizers.Tokenizer, got {type(tokenizer).__name__}")
    return tok


def _own_tokenizer(tokenizer: Tokenizer) -> Tokenizer:
    """A private copy, so our truncation/padding settings never touch the caller's
    object and prefetch threads never share mutable state with it."""
    copy = Tokenizer.from_str(tokenizer.to_str())
    copy.no_padding()
    copy.no_truncation()
    return copy


def _pad_id(tokenizer: Tokenizer, pad_id: int | None) -> int:
    if pad_id is not None:
        return int(pad_id)
    if tokenizer.padding is not None:
        return int(tokenizer.padding["pad_id"])
    for token in _PAD_TOKENS:
        i = tokenizer.token_to_id(token)
        if i is not None:
            return int(i)
    return 0


def _field(example: dict, key: str):
    try:
        return example[key]
    except (KeyError, TypeError):
        keys = sorted(example) if isinstance(example, dict) else type(example).__name__
        raise KeyError(f"example lacks {key!r} (has {keys})") from None


def _pad_rows(rows: Sequence[Sequence[int]], length: int, fill: int) -> np.ndarray:
    out = np.full((len(rows), length), fill, np.int32)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def _bucket_for(longest: int, length: int | None, buckets: Sequence[int]) -> int:
    """The bucket of ``length`` when given (a global batch's longest), else of ``longest``."""
    if length is None:
        return pick_bucket(longest, buckets)
    if length < longest:
        raise ValueError(
            f"length {length} is shorter than the longest example here ({longest} tokens): "
            "pass the longest token count of the whole (global) batch"
        )
    return pick_bucket(length, buckets)


def _where(example, i: int) -> str:
    if isinstance(example, dict) and "idx" in example:
        return f"example idx {example['idx']} (row {i} of the batch)"
    return f"row {i} of the batch"


def _class_id(value, num_labels: int, where: str) -> int:
    """A label as a class id in [0, num_labels): an id past the end gathers out of bounds
    in the loss (NaN), -1 wraps to the last class (silently wrong), so they stop here."""
    ok = isinstance(value, (int, np.integer))
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        ok, value = True, int(value)
    if not ok or not 0 <= int(value) < num_labels:
        raise ValueError(
            f"label {value!r} of {where} is not a class id in [0, {num_labels}) "
            f"(num_labels={num_labels}): fix the data or set model.num_labels "
            "(unlabelled test splits carry -1: predict them without labels)"
        )
    return int(value)


def _score(value, where: str) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        out = math.nan
    if not math.isfinite(out):
        raise ValueError(
            f"label {value!r} of {where} is not a finite number, which regression "
            "(num_labels=1) needs"
        )
    return out


def _optional_idx(examples: Sequence[dict], batch: dict) -> None:
    if all(isinstance(e, dict) and "idx" in e for e in examples):
        batch["idx"] = np.asarray([int(e["idx"]) for e in examples], np.int32)


class EncoderCollator:
    """GLUE examples to an encoder batch: single texts or pairs, one ``encode_batch``.

    Pairs are truncated longest-first to ``max_len`` by the tokenizer, which also adds
    its special tokens and type ids (``[CLS] a [SEP] b [SEP]`` with 0/1 for BERT).
    ``num_labels`` checks the labels: class ids in ``[0, num_labels)`` (int32), or with 1
    (regression) finite float32 scores; a bad label raises instead of becoming a NaN loss.
    ``label_dtype`` (without ``num_labels``) None infers float32 when a batch's labels are
    floats, else int32.
    """

    def __init__(
        self,
        tokenizer,
        *,
        max_len: int = 128,
        buckets: Sequence[int] | None = None,
        pad_id: int | None = None,
        label_dtype=None,
        num_labels: int | None = None,
    ):
        raw = _unwrap(tokenizer)
        self.pad_id = _pad_id(raw, pad_id)
        self.tokenizer = _own_tokenizer(raw)
        self.tokenizer.enable_truncation(max_len, strategy="longest_first")
        self.max_len = max_len
        self.buckets = make_buckets(max_len, buckets)
        self.label_dtype = label_dtype
        if num_labels is not None and (isinstance(num_labels, bool) or int(num_labels) < 1):
            raise ValueError(f"num_labels must be >= 1 (1 for regression), got {num_labels!r}")
        self.num_labels = None if num_labels is None else int(num_labels)

    def _encode(self, examples: Sequence[dict]):
        inputs = []
        for e in examples:
            a, b = _field(e, "text_a"), e.get("text_b")
            inputs.append(a if b is None else (a, b))
        return self.tokenizer.encode_batch(inputs, add_special_tokens=True)

    def length(self, examples: Sequence[dict]) -> int:
        """The longest example's token count after truncation (tokenises only)."""
        return max(len(x.ids) for x in self._encode(examples))

    def __call__(self, examples: Sequence[dict], length: int | None = None) -> dict:
        """A batch padded to the bucket of ``length`` (e.g. the global batch's longest
        example, see ``length``) when given, else of these examples' longest."""
        encodings = self._encode(examples)
        length = _bucket_for(max(len(x.ids) for x in encodings), length, self.buckets)
        batch = {
            "input_ids": _pad_rows([x.ids for x in encodings], length, self.pad_id),
            "attention_mask": _pad_rows([[1] * len(x.ids) for x in encodings], length, 0),
            "token_type_ids": _pad_rows([x.type_ids for x in encodings], length, 0),
        }
        batch["labels"] = self._labels(examples)
        _optional_idx(examples, batch)
        return batch

    def _labels(self, examples: Sequence[dict]) -> np.ndarray:
        labels = [_field(e, "label") for e in examples]
        n, dtype = self.num_labels, self.label_dtype
        if n == 1:
            labels = [_score(v, _where(e, i)) for i, (e, v) in enumerate(zip(examples, labels))]
            dtype = np.float32 if dtype is None else dtype
        elif n is not None:
            labels = [
                _class_id(v, n, _where(e, i)) for i, (e, v) in enumerate(zip(examples, labels))
            ]
            dtype = np.int32 if dtype is None else dtype
        if dtype is None:
            floats = any(isinstance(v, (float, np.floating)) for v in labels)
            dtype = np.float32 if floats else np.int32
        return np.asarray(labels, dtype)


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
        rows = _bucket_for(max(len(p) for p in packs), length, self.buckets)
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
        _optional_idx(examples, batch)
        return batch


class DecoderCollator:
    """Prompt/response examples to a causal-LM batch with a loss mask on the response.

    Each text is tokenised whole (prompt + response, so tokens at the seam are those
    generation would see) with the tokenizer's special tokens (e.g. BOS); a token is a
    response token when it ends after the prompt's last character. Like LLM-Adapters,
    sequences are cut to ``max_len`` and EOS is appended only when there is room and
    the sequence does not already end with it.
    """

    def __init__(
        self,
        tokenizer,
        *,
        max_len: int = 256,
        buckets: Sequence[int] | None = None,
        pad_id: int | None = None,
        eos_id: int | None = None,
        add_special_tokens: bool = True,
    ):
        raw = _unwrap(tokenizer)
        self.tokenizer = _own_tokenizer(raw)
        self.pad_id = _pad_id(raw, pad_id)
        if eos_id is None:
            eos_id = appended_eos_id(raw)
        if eos_id is None:
            raise ValueError(f"no EOS token among {EOS_TOKENS} in the vocabulary: pass eos_id")
        self.eos_id = int(eos_id)
        self.max_len = max_len
        self.buckets = make_buckets(max_len, buckets)
        self.add_special_tokens = add_special_tokens

    def _rows(self, examples: Sequence[dict]) -> tuple[list[list[int]], list[list[int]]]:
        """Token ids and loss masks per example, cut to ``max_len``, EOS appended."""
        prompts = [_field(e, "prompt") for e in examples]
        texts = [p + _field(e, "response") for p, e in zip(prompts, examples)]
        encodings = self.tokenizer.encode_batch(texts, add_special_tokens=self.add_special_tokens)
        ids_rows, mask_rows = [], []
        for prompt, enc in zip(prompts, encodings):
            cut = len(prompt)
            ids = list(enc.ids)
            special = enc.special_tokens_mask
            loss = [int(end > cut and not s) for (_, end), s in zip(enc.offsets, special)]
            ids, loss = ids[: self.max_len], loss[: self.max_len]
            if len(ids) < self.max_len and (not ids or ids[-1] != self.eos_id):
                ids.append(self.eos_id)
                loss.append(1)
            elif ids and ids[-1] == self.eos_id:
                loss[-1] = 1  # the tokenizer's own EOS ends the response: learn it too
            ids_rows.append(ids)
            mask_rows.append(loss)
        return ids_rows, mask_rows

    def length(self, examples: Sequence[dict]) -> int:
        """The longest example's token count after truncation and EOS."""
        return max(len(r) for r in self._rows(examples)[0])

    def __call__(self, examples: Sequence[dict], length: int | None = None) -> dict:
        """A batch padded to the bucket of ``length`` (e.g. the global batch's longest
        example, see ``length``) when given, else of these examples' longest."""
        ids_rows, mask_rows = self._rows(examples)
        length = _bucket_for(max(len(r) for r in ids_rows), length, self.buckets)
        input_ids = _pad_rows(ids_rows, length, self.pad_id)
        batch = {
            "input_ids": input_ids,
            "attention_mask": _pad_rows([[1] * len(r) for r in ids_rows], length, 0),
            "loss_mask": _pad_rows(mask_rows, length, 0),
            "labels": input_ids.copy(),
        }
        _optional_idx(examples, batch)
        return batch


# ----------------------------------------------------------------------------- iteration


def _process_defaults(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax  # only when asked to look: importing jax is slow

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    return int(process_index), int(process_count)


def read_many(source, indices) -> list:
    """Items of a random-access source, in one batched read when it has ``__getitems__``
    (ArrayRecord: ~5x faster than item by item)."""
    indices = [int(i) for i in indices]
    getitems = getattr(source, "__getitems__", None)
    return list(getitems(indices)) if getitems else [source[i] for i in indices]


def read_all(source, chunk: int = 8192):
    """Every item of a source, read in chunks (length grouping reads a whole split)."""
    n = len(source)
    for start in range(0, n, chunk):
        yield from read_many(source, range(start, min(n, start + chunk)))


def _measures_length(collate) -> bool:
    return callable(getattr(collate, "length", None)) and hasattr(collate, "buckets")


class _Steps:
    """Iteration over ``_make_batch(step)``, a pure function of the step: inline, or up to
    ``prefetch`` batches ahead in grain threads (tokenizers releases the GIL)."""

    num_steps: int | None

    def _init_steps(self, num_threads: int, prefetch: int) -> None:
        stop = sys.maxsize if self.num_steps is None else self.num_steps
        self._batches = grain.MapDataset.range(0, stop).map(self._make_batch)
        self._read = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)
        self.num_threads, self.prefetch = int(num_threads), int(prefetch)
        self._step = 0
        self._it = None

    def _make_batch(self, step: int) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self.num_steps is not None and self._step >= self.num_steps:
            raise StopIteration
        if self.num_threads <= 0:
            batch = self._make_batch(self._step)
        else:
            if self._it is None:
                self._it = iter(self._batches[self._step :].to_iter_dataset(self._read))
            batch = next(self._it)
        self._step += 1
        return batch

    def __len__(self) -> int:
        """Batches left to yield (finite iterators only)."""
        if self.num_steps is None:
            raise TypeError("an iterator with epochs=None has no length")
        return self.num_steps - self._step

    @property
    def step(self) -> int:
        """Batches yielded so far (since the start of epoch 0)."""
        return self._step


class BatchIterator(_Steps):
    """Deterministic, process-sharded, restorable batches over a random-access source.

    ``batch_size`` is the global batch; each of ``process_count`` processes yields
    ``batch_size // process_count`` rows of every global batch. Training
    (``drop_remainder=True``) yields ``len(source) // batch_size`` batches per epoch;
    evaluation (``False``) yields ``ceil(len / batch_size)``, the last one completed
    with ``valid=0`` rows, so every example is seen exactly once over all processes.
    ``epochs=None`` repeats forever. ``num_threads`` > 0 prepares up to ``prefetch``
    batches ahead in grain threads (tokenizers releases the GIL); 0 runs inline.

    With several processes every batch pads to ``bucket_at(step)``, the bucket of the
    whole global batch's longest example (so each process tokenises the global batch
    once more to measure it: ~1.3 ms for 32 SST-2 sentences); the collator must then
    have ``length(examples)`` and ``buckets`` and take ``length=`` (as ours do). One
    process pads to its own longest, which is the same bucket.

    ``group_by_length=W`` (with a ``length_fn``) sorts each window of W batches of
    the epoch's order by length and then shuffles the batches, so a batch holds
    examples of similar length and pads to a small bucket: far less padding when
    lengths vary (SST-2 phrases), with the same examples per epoch. Without
    shuffling it sorts the whole split (evaluation order does not matter).
    """

    def __init__(
        self,
        source,
        collate: Callable[..., dict],
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
        length_fn: Callable[[dict], int] | None = None,
    ):
        self.source = source
        self.collate = collate
        n = len(source)
        if n == 0:
            raise ValueError("the source is empty")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.process_index, self.process_count = _process_defaults(process_index, process_count)
        if batch_size % self.process_count:
            raise ValueError(
                f"global batch_size {batch_size} is not divisible by process_count "
                f"{self.process_count}"
            )
        if self.process_count > 1 and not _measures_length(collate):
            raise ValueError(
                f"with {self.process_count} processes the collator must have length(examples) "
                "and buckets and accept length= (as EncoderCollator / DecoderCollator do), so "
                f"that every process pads to one shape; {type(collate).__name__} does not"
            )
        if not 0 <= seed < 2**32:
            raise ValueError(f"seed must be in [0, 2**32), got {seed}")
        if epochs is not None and epochs < 1:
            raise ValueError(f"epochs must be >= 1 or None (forever), got {epochs}")
        self.num_examples = n
        self.batch_size = batch_size
        self.local_batch_size = batch_size // self.process_count
        self.seed, self.shuffle, self.epochs = int(seed), bool(shuffle), epochs
        self.drop_remainder = drop_remainder
        self.steps_per_epoch = n // batch_size if drop_remainder else math.ceil(n / batch_size)
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"{n} examples make no full global batch of {batch_size} with drop_remainder=True"
            )
        self.num_steps = None if epochs is None else self.steps_per_epoch * epochs
        order = grain.MapDataset.range(n)
        # Indexing past n reshuffles with seed + epoch; range maps i to i % n.
        self._order = order.shuffle(seed=self.seed) if self.shuffle else order
        if group_by_length and length_fn is None:
            raise ValueError("group_by_length needs a length_fn (example -> length)")
        self.group_by_length = int(group_by_length)
        self._length_fn = length_fn
        self._lengths: np.ndarray | None = None
        self._epoch_cache: tuple[int, np.ndarray] | None = None
        self._init_steps(num_threads, prefetch)
        if state is not None:
            self.set_state(state)

    def _global_rows(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """(positions in the epoch, source indices) of global batch ``step``'s rows."""
        epoch, k = divmod(int(step), self.steps_per_epoch)
        n = self.num_examples
        positions = k * self.batch_size + np.arange(self.batch_size)
        if self.group_by_length:
            index = self._grouped_order(epoch)[positions % n]
        else:
            index = [int(self._order[epoch * n + int(q)]) for q in positions % n]
        return positions, np.asarray(index, np.int64)

    def bucket_at(self, step: int) -> int:
        """The padded length of global batch ``step``: the bucket of its longest example
        (tokenised here), the same on every process."""
        if not _measures_length(self.collate):
            raise TypeError(f"{type(self.collate).__name__} has no length(examples) / buckets")
        index = self._global_rows(step)[1]
        longest = self.collate.length(read_many(self.source, index))
        return pick_bucket(longest, self.collate.buckets)

    def batch_at(self, step: int, length: int | None = None) -> dict[str, np.ndarray]:
        """This process's rows of global batch ``step`` (a pure function of the step,
        seed and process), padded to the bucket of ``length`` when given, else to
        ``bucket_at(step)`` with several processes."""
        if length is None and self.process_count > 1:
            length = self.bucket_at(step)
        positions, index = self._global_rows(step)
        b, p = self.local_batch_size, self.process_index
        positions, index = positions[p * b : (p + 1) * b], index[p * b : (p + 1) * b]
        valid = positions < self.num_examples
        examples = read_many(self.source, index)
        batch = self.collate(examples) if length is None else self.collate(examples, length)
        batch["valid"] = valid.astype(np.int32)
        batch["index"] = np.where(valid, index, -1).astype(np.int32)
        if "idx" in batch:
            batch["idx"] = np.where(valid, batch["idx"], -1).astype(np.int32)
        return batch

    def _make_batch(self, step: int) -> dict[str, np.ndarray]:
        return self.batch_at(step)

    def _grouped_order(self, epoch: int) -> np.ndarray:
        """The epoch's example order with length-grouped batches: a pure function of
        (seed, epoch), so resuming and process sharding work as without grouping."""
        cached = self._epoch_cache
        if cached is not None and cached[0] == epoch:
            return cached[1]
        n, size = self.num_examples, self.batch_size
        if self._lengths is None:
            self._lengths = np.asarray([self._length_fn(x) for x in read_all(self.source)])
        order = np.asarray([int(self._order[epoch * n + q]) for q in range(n)])
        if not self.shuffle:
            order = order[np.argsort(-self._lengths[order], kind="stable")]
        else:
            window = self.group_by_length * size
            order = np.concatenate(
                [
                    chunk[np.argsort(-self._lengths[chunk], kind="stable")]
                    for chunk in np.split(order, range(window, n, window))
                ]
            )
            full = (n // size) * size
            rng = np.random.default_rng([self.seed, epoch])
            batches = order[:full].reshape(-1, size)[rng.permutation(n // size)]
            order = np.concatenate([batches.reshape(-1), order[full:]])
        self._epoch_cache = (epoch, order)
        return order

    def state_at(self, step: int) -> dict:
        """The state of an iterator whose next batch is ``step``."""
        epoch, position = divmod(int(step), self.steps_per_epoch)
        return {
            "epoch": epoch,
            "position": position,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "num_examples": self.num_examples,
            "batch_size": self.batch_size,
            "group_by_length": self.group_by_length,
        }

    def get_state(self) -> dict:
        """A JSON-serialisable position: the next batch is ``position`` of ``epoch``."""
        return self.state_at(self._step)

    def step_of(self, state: dict) -> int:
        """The next step of a ``get_state`` result; refuses another pipeline's state."""
        missing = [k for k in _STATE_KEYS if k not in state]
        if missing:
            raise ValueError(f"iterator state lacks {missing}: {state}")
        for key, mine in (
            ("seed", self.seed),
            ("shuffle", self.shuffle),
            ("num_examples", self.num_examples),
            ("batch_size", self.batch_size),
            ("group_by_length", self.group_by_length),
        ):
            if key in state and state[key] != mine:
                raise ValueError(
                    f"iterator state has {key}={state[key]!r} but this pipeline has {mine!r}"
                )
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position < self.steps_per_epoch:
            raise ValueError(
                f"state epoch {epoch} / position {position} out of range "
                f"({self.steps_per_epoch} batches per epoch)"
            )
        step = epoch * self.steps_per_epoch + position
        if self.num_steps is not None and step > self.num_steps:
            raise ValueError(f"state step {step} is past the end ({self.num_steps} batches)")
        return step

    def set_state(self, state: dict) -> None:
        """Continues exactly where ``get_state`` was taken; refuses another pipeline's."""
        self._step = self.step_of(state)
        self._it = None


class StackedBatches(_Steps):
    """Batches of several members at once, for a vectorised run (one program, several seeds).

    ``members`` are BatchIterators over the same source with the same batch size and
    sharding (typically one seed each). Every array gets a leading member axis; at each
    step all members pad to one bucket, the largest of their ``bucket_at(step)``, so a
    member's slice is exactly what its own iterator yields when padded to that length
    (``member.batch_at(step, length)``). The state holds each member's state, so
    restoring replays exactly. ``num_threads`` / ``prefetch`` default to the first
    member's. Iterate the stack only: the members' own positions do not move.
    """

    def __init__(
        self,
        members: Sequence[BatchIterator],
        *,
        num_threads: int | None = None,
        prefetch: int | None = None,
        state: dict | None = None,
    ):
        self.members = list(members)
        if not self.members:
            raise ValueError("StackedBatches needs at least one member iterator")
        first = self.members[0]
        for i, m in enumerate(self.members):
            if not isinstance(m, BatchIterator):
                raise TypeError(f"member {i} is a {type(m).__name__}, not a BatchIterator")
            if not _measures_length(m.collate):
                raise ValueError(
                    f"member {i}'s collator ({type(m.collate).__name__}) has no "
                    "length(examples) / buckets to pad members to a common length"
                )
            for key in (
                "batch_size",
                "process_index",
                "process_count",
                "steps_per_epoch",
                "num_steps",
            ):
                if getattr(m, key) != getattr(first, key):
                    raise ValueError(
                        f"member {i} has {key}={getattr(m, key)!r} but member 0 has "
                        f"{getattr(first, key)!r}: members must batch alike"
                    )
            if tuple(m.collate.buckets) != tuple(first.collate.buckets):
                raise ValueError(
                    f"member {i} has buckets {m.collate.buckets} but member 0 has "
                    f"{first.collate.buckets}: members must pad to the same buckets"
                )
        self.num_steps = first.num_steps
        self.steps_per_epoch = first.steps_per_epoch
        self.batch_size, self.local_batch_size = first.batch_size, first.local_batch_size
        self._init_steps(
            first.num_threads if num_threads is None else num_threads,
            first.prefetch if prefetch is None else prefetch,
        )
        if state is not None:
            self.set_state(state)

    def bucket_at(self, step: int) -> int:
        """The common padded length of step ``step``: the largest member bucket."""
        return max(m.bucket_at(step) for m in self.members)

    def batch_at(self, step: int) -> dict[str, np.ndarray]:
        length = self.bucket_at(step)
        parts = [m.batch_at(step, length) for m in self.members]
        return {k: np.stack([p[k] for p in parts]) for k in parts[0]}

    def _make_batch(self, step: int) -> dict[str, np.ndarray]:
        return self.batch_at(step)

    def get_state(self) -> dict:
        """``{'members': [each member's state]}``, JSON-serialisable."""
        return {"members": [m.state_at(self._step) for m in self.members]}

    def set_state(self, state: dict) -> None:
        """Continues exactly where ``get_state`` was taken (each member checks its own)."""
        states = state.get("members") if isinstance(state, dict) else None
        if not isinstance(states, list) or len(states) != len(self.members):
            raise ValueError(
                f"stacked state must be {{'members': [{len(self.members)} member states]}}, "
                f"got {state!r}"
            )
        steps = {m.step_of(s) for m, s in zip(self.members, states)}
        if len(steps) != 1:
            raise ValueError(f"member states are at different steps {sorted(steps)}: {state!r}")
        self._step = steps.pop()
        self._it = None


# ----------------------------------------------------------------------------- conveniences


def encoder_batches(
    source,
    tokenizer,
    *,
    batch_size: int,
    max_len: int = 128,
    buckets: Sequence[int] | None = None,
    seed: int = 0,
    shuffle: bool = True,
    epochs: int | None = 1,
    drop_remainder: bool = True,
    process_index: int | None = None,
    process_count: int | None = None,
    pad_id: int | None = None,
    label_dtype=None,
    num_threads: int = 1,
    prefetch: int = 2,
    state: dict | None = None,
    group_by_length: int = 0,
    num_labels: int | None = None,
    pack_groups: int | None = None,
) -> BatchIterator:
    """Training batches for an encoder classifier/regressor from GLUE examples;
    ``num_labels`` checks the labels (see EncoderCollator). ``pack_groups`` packs short
    examples into rows of ``max_len`` (see PackedEncoderCollator), in that many groups per
    global batch (micro-batches x data shards)."""
    kwargs = dict(max_len=max_len, pad_id=pad_id, label_dtype=label_dtype, num_labels=num_labels)
    if pack_groups is None:
        collate = EncoderCollator(tokenizer, buckets=buckets, **kwargs)
    else:
        if pack_groups < 1 or batch_size % pack_groups:
            raise ValueError(
                f"batch_size {batch_size} does not split into {pack_groups} packing groups"
            )
        collate = PackedEncoderCollator(tokenizer, group_size=batch_size // pack_groups, **kwargs)
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
        length_fn=lambda ex: len(ex["text_a"]) + len(ex.get("text_b") or ""),
    )


def decoder_batches(
    source,
    tokenizer,
    *,
    batch_size: int,
    max_len: int = 256,
    buckets: Sequence[int] | None = None,
    seed: int = 0,
    shuffle: bool = True,
    epochs: int | None = 1,
    drop_remainder: bool = True,
    process_index: int | None = None,
    process_count: int | None = None,
    pad_id: int | None = None,
    eos_id: int | None = None,
    add_special_tokens: bool = True,
    num_threads: int = 1,
    prefetch: int = 2,
    state: dict | None = None,
    group_by_length: int = 0,
) -> BatchIterator:
    """Causal-LM training batches (loss on the response) from prompt/response examples."""
    collate = DecoderCollator(
        tokenizer,
        max_len=max_len,
        buckets=buckets,
        pad_id=pad_id,
        eos_id=eos_id,
        add_special_tokens=add_special_tokens,
    )
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
        length_fn=lambda ex: len(ex["prompt"]) + len(ex["response"]),
    )


def encoder_eval_batches(source, tokenizer, *, batch_size: int, **kwargs) -> BatchIterator:
    """One pass in source order, remainder kept (``valid`` marks real rows)."""
    kwargs.update(shuffle=False, epochs=1, drop_remainder=False)
    return encoder_batches(source, tokenizer, batch_size=batch_size, **kwargs)


def decoder_eval_batches(source, tokenizer, *, batch_size: int, **kwargs) -> BatchIterator:
    """One pass in source order, remainder kept (e.g. for validation loss)."""
    kwargs.update(shuffle=False, epochs=1, drop_remainder=False)
    return decoder_batches(source, tokenizer, batch_size=batch_size, **kwargs)


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
