"""The merged format: K + ΔK of any method as a Hugging Face model folder transformers loads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp

from morejax.interop.hf import hf_model
from morejax.models import weights
from morejax.paths import unflatten
from morejax.transform import merge

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "merges.txt",
    "vocab.json",
)


def export_merged(
    base, adapters, config, out_dir, *, tokenizer_from=None, dtype=None, labels=None
) -> Path:
    """K + ΔK of every adapter (any method) as a Hugging Face model folder transformers loads.

    ``base`` may be a flat ``{path tuple: leaf}`` dict or a nested tree. Writes
    ``config.json`` (with ``labels``, the class names in head order, as id2label) and
    ``model.safetensors`` (streamed, one tensor at a time), plus the tokenizer files found
    in ``tokenizer_from``.
    """
    if isinstance(base, dict) and base and isinstance(next(iter(base)), tuple):
        base = unflatten(base)
    params = merge(base, adapters) if adapters else base
    if dtype is not None:
        params = jax.tree.map(
            lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, params
        )
    hf = hf_model(config, params)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(hf.hf_config(labels), indent=2) + "\n")
    weights.save_safetensors(params, out, hf.inverse, metadata={"format": "pt"})
    if tokenizer_from is not None:
        for name in TOKENIZER_FILES:
            src = Path(tokenizer_from) / name
            if src.is_file():
                shutil.copyfile(src, out / name)
    return out
