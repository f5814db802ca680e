"""Special-token conventions that both the LM collator (data) and generation (models)
must agree on: they sit below both so neither imports the other."""

from __future__ import annotations

from typing import Any

from tokenizers import Tokenizer

__all__ = ["EOS_TOKENS", "appended_eos_id"]

EOS_TOKENS = ("</s>", "<|endoftext|>", "<|end_of_text|>", "<eos>", "<|im_end|>")


def appended_eos_id(tokenizer: Any) -> int | None:
    """The EOS the LM collator appends by default: the first of ``EOS_TOKENS`` in the
    vocabulary. Generation must stop at it too, and it can differ from the tokenizer's
    own EOS (SmolLM2: ``<|endoftext|>`` here, ``<|im_end|>`` there)."""
    tok = tokenizer if isinstance(tokenizer, Tokenizer) else getattr(tokenizer, "tokenizer", None)
    if not isinstance(tok, Tokenizer):
        raise TypeError(f"expected a tokenizers.Tokenizer, got {type(tokenizer).__name__}")
    for token in EOS_TOKENS:
        found = tok.token_to_id(token)
        if found is not None:
            return int(found)
    return None
