"""Collators: examples to padded batches, one per model kind.

Batches are dicts of numpy arrays, all ``(B, L)`` or ``(B,)``, ``L`` one of a few bucket
lengths (so jit compiles a handful of shapes):

- encoder (GLUE examples ``{'text_a', 'text_b', 'label', 'idx'}``): ``input_ids``,
  ``attention_mask``, ``token_type_ids`` (0 for the first text, 1 for the second),
  ``labels`` (int32, or float32 for regression), ``idx`` when examples carry one;
- decoder (examples ``{'prompt', 'response'}``): ``input_ids`` = tokens of
  prompt + response + EOS, right-padded; ``attention_mask``; ``loss_mask`` (1 on the
  response and EOS tokens); ``labels`` equal to ``input_ids`` (unshifted, as in Hugging
  Face): the loss predicts ``labels[:, 1:]`` from ``logits[:, :-1]`` weighted by
  ``loss_mask[:, 1:]``.

A collator is called as ``collate(examples, length=None)`` and pads to the bucket of
``length`` when given (a global batch's longest example, so that every process builds one
shape), else of these examples' longest; ``length(examples)`` measures, ``buckets`` lists
the allowed lengths, and ``text_length(example)`` is the cheap size that length grouping
sorts by.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from morejax import vocab

__all__ = ["DecoderCollator", "EncoderCollator", "make_buckets", "pick_bucket"]


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


def bucket_of(longest: int, length: int | None, buckets: Sequence[int]) -> int:
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


def copy_idx(examples: Sequence[dict], batch: dict) -> None:
    """``batch['idx']`` from the examples' own ids (GLUE's), when every example has one."""
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
        raw = vocab.unwrap(tokenizer)
        self.pad_id = vocab.pad_token_id(raw) if pad_id is None else int(pad_id)
        self.tokenizer = vocab.private_copy(raw)
        self.tokenizer.enable_truncation(max_len, strategy="longest_first")
        self.max_len = max_len
        self.buckets = make_buckets(max_len, buckets)
        self.label_dtype = label_dtype
        if num_labels is not None and (isinstance(num_labels, bool) or int(num_labels) < 1):
            raise ValueError(f"num_labels must be >= 1 (1 for regression), got {num_labels!r}")
        self.num_labels = None if num_labels is None else int(num_labels)

    @staticmethod
    def text_length(example: dict) -> int:
        """Characters, a cheap stand-in for tokens when grouping by length."""
        return len(example["text_a"]) + len(example.get("text_b") or "")

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
        length = bucket_of(max(len(x.ids) for x in encodings), length, self.buckets)
        batch = {
            "input_ids": _pad_rows([x.ids for x in encodings], length, self.pad_id),
            "attention_mask": _pad_rows([[1] * len(x.ids) for x in encodings], length, 0),
            "token_type_ids": _pad_rows([x.type_ids for x in encodings], length, 0),
        }
        batch["labels"] = self._labels(examples)
        copy_idx(examples, batch)
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
        raw = vocab.unwrap(tokenizer)
        self.tokenizer = vocab.private_copy(raw)
        self.pad_id = vocab.pad_token_id(raw) if pad_id is None else int(pad_id)
        if eos_id is None:
            eos_id = vocab.appended_eos_id(raw)
        if eos_id is None:
            raise ValueError(
                f"no EOS token among {vocab.EOS_TOKENS} in the vocabulary: pass eos_id"
            )
        self.eos_id = int(eos_id)
        self.max_len = max_len
        self.buckets = make_buckets(max_len, buckets)
        self.add_special_tokens = add_special_tokens

    @staticmethod
    def text_length(example: dict) -> int:
        """Characters, a cheap stand-in for tokens when grouping by length."""
        return len(example["prompt"]) + len(example["response"])

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
        length = bucket_of(max(len(r) for r in ids_rows), length, self.buckets)
        input_ids = _pad_rows(ids_rows, length, self.pad_id)
        batch = {
            "input_ids": input_ids,
            "attention_mask": _pad_rows([[1] * len(r) for r in ids_rows], length, 0),
            "loss_mask": _pad_rows(mask_rows, length, 0),
            "labels": input_ids.copy(),
        }
        copy_idx(examples, batch)
        return batch
