"""Tokenizer conventions that both the data collators and the models (generation, pair
encoding) must agree on: which object is the tokenizer, which id pads, which EOS is
appended. They sit below both so neither imports the other."""

from __future__ import annotations

from typing import Any

from tokenizers import Tokenizer

__all__ = ["EOS_TOKENS", "PAD_TOKENS", "appended_eos_id", "pad_token_id", "private_copy", "unwrap"]

EOS_TOKENS = ("</s>", "<|endoftext|>", "<|end_of_text|>", "<eos>", "<|im_end|>")
# `<unk>` last: LLaMA-style vocabularies have no pad token and pad with it.
PAD_TOKENS = ("[PAD]", "<pad>", "<|pad|>", "<unk>")


def unwrap(tokenizer: Any) -> Tokenizer:
    """A ``tokenizers.Tokenizer``, or a wrapper holding one as ``.tokenizer``."""
    tok = tokenizer if isinstance(tokenizer, Tokenizer) else getattr(tokenizer, "tokenizer", None)
    if not isinstance(tok, Tokenizer):
        raise TypeError(f"expected a tokenizers.Tokenizer, got {type(tokenizer).__name__}")
    return tok


def private_copy(tokenizer: Tokenizer) -> Tokenizer:
    """A copy without padding or truncation, so our settings never touch the caller's
    object and prefetch threads never share mutable state with it."""
    copy = Tokenizer.from_str(tokenizer.to_str())
    copy.no_padding()
    copy.no_truncation()
    return copy


def pad_token_id(tokenizer: Tokenizer) -> int:
    """The id that pads: the tokenizer's padding setting, else the first of ``PAD_TOKENS``
    in the vocabulary, else 0."""
    if tokenizer.padding is not None:
        return int(tokenizer.padding["pad_id"])
    for token in PAD_TOKENS:
        found = tokenizer.token_to_id(token)
        if found is not None:
            return int(found)
    return 0


def appended_eos_id(tokenizer: Any) -> int | None:
    """The EOS the LM collator appends by default: the first of ``EOS_TOKENS`` in the
    vocabulary. Generation must stop at it too, and it can differ from the tokenizer's
    own EOS (SmolLM2: ``<|endoftext|>`` here, ``<|im_end|>`` there)."""
    tok = unwrap(tokenizer)
    for token in EOS_TOKENS:
        found = tok.token_to_id(token)
        if found is not None:
            return int(found)
    return None
