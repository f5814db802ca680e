"""Offline ``tokenizers`` loading and batched (pair) encoding to padded int32 arrays."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from morejax.vocab import pad_token_id

__all__ = ["load_tokenizer", "pad_token_id", "encode_pairs"]


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Loads ``tokenizer.json`` (a file or a dir holding one), without network.

    Padding and truncation stored in the file are switched off (MiniLM's pads every
    text to 128): lengths are the data pipeline's choice, made in ``encode_pairs``.
    """
    p = Path(path)
    if p.is_dir():
        p = p / "tokenizer.json"
    if not p.is_file():
        raise FileNotFoundError(f"no tokenizer.json at {p}")
    tok = Tokenizer.from_file(str(p))
    tok.no_padding()
    tok.no_truncation()
    return tok


def encode_pairs(
    tokenizer: Tokenizer,
    first: Sequence[str],
    second: Sequence[str] | None = None,
    *,
    max_length: int = 128,
    pad_to: int | None = None,
    pad_to_multiple_of: int | None = None,
    pad_id: int | None = None,
) -> dict[str, np.ndarray]:
    """Encodes texts (or text pairs) with the model's special tokens, in one batch.

    The tokenizer's post-processor adds ``[CLS] a [SEP] b [SEP]`` (BERT, type ids
    0/1) or ``<s> a </s></s> b </s>`` (RoBERTa); pairs are truncated longest-first
    to ``max_length`` (or ``pad_to``). Pads right to ``pad_to`` (a fixed length) or to the
    longest item rounded up to ``pad_to_multiple_of``. Returns int32 arrays
    ``input_ids``, ``attention_mask``, ``token_type_ids`` of shape (B, L).
    """
    if second is not None and len(second) != len(first):
        raise ValueError(f"{len(first)} first texts but {len(second)} second texts")
    if pad_to is not None:
        max_length = min(max_length, pad_to)  # a fixed length also bounds truncation
    inputs = list(first) if second is None else list(zip(first, second))
    saved = tokenizer.truncation
    saved_padding = tokenizer.padding
    try:
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length, strategy="longest_first")
        encodings = tokenizer.encode_batch(inputs, add_special_tokens=True)
    finally:  # leave the caller's tokenizer as it was
        if saved is None:
            tokenizer.no_truncation()
        else:
            tokenizer.enable_truncation(**saved)
        if saved_padding is not None:
            tokenizer.enable_padding(**_padding_kwargs(saved_padding))
    pad = pad_token_id(tokenizer) if pad_id is None else pad_id
    longest = max((len(e.ids) for e in encodings), default=0)
    L = pad_to if pad_to is not None else longest
    if pad_to is None and pad_to_multiple_of:
        L = min(-(-max(L, 1) // pad_to_multiple_of) * pad_to_multiple_of, max_length)
    B = len(encodings)
    ids_BxL = np.full((B, L), pad, np.int32)
    mask_BxL = np.zeros((B, L), np.int32)
    types_BxL = np.zeros((B, L), np.int32)
    for b, e in enumerate(encodings):
        n = len(e.ids)
        ids_BxL[b, :n] = e.ids
        mask_BxL[b, :n] = 1
        types_BxL[b, :n] = e.type_ids
    return {"input_ids": ids_BxL, "attention_mask": mask_BxL, "token_type_ids": types_BxL}


def _padding_kwargs(padding: dict) -> dict:
    """``Tokenizer.padding`` reports a dict whose keys ``enable_padding`` mostly accepts."""
    kw = {
        k: padding[k] for k in ("direction", "pad_id", "pad_type_id", "pad_token") if k in padding
    }
    if padding.get("length") is not None:
        kw["length"] = padding["length"]
    if padding.get("pad_to_multiple_of") is not None:
        kw["pad_to_multiple_of"] = padding["pad_to_multiple_of"]
    return kw
