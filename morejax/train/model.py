"""The network of a run: a named config or pretrained weights, fresh heads per seed.

`Loaded` is what the rest of training needs from the model side; shapes-only helpers
(`abstract_params`) let parameter tables work for 7B models on any machine.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp

import morejax


@dataclasses.dataclass
class Loaded:
    model: Any
    params: Any
    tokenizer: Any
    family: str


def model_from_config(spec):
    """The Linen module of a named config plus `overrides` (no weights)."""
    from morejax.models import bert, llama

    mod = {"bert": bert, "llama": llama}[spec.family]
    if spec.name not in mod.CONFIGS:
        raise ValueError(
            f"unknown {spec.family} config {spec.name!r}; known: {sorted(mod.CONFIGS)}"
        )
    fields = dict(spec.overrides or {}, scan_layers=spec.scan_layers, dtype=spec.dtype)
    if spec.family == "bert":
        cfg = mod.CONFIGS[spec.name].replace(num_labels=spec.num_labels, **fields)
        return mod.MODELS[spec.head or "encoder"](cfg)
    return mod.LlamaForCausalLM(mod.CONFIGS[spec.name].replace(**fields))


def _example_inputs(family: str) -> tuple:
    ids = jnp.zeros((1, 8), jnp.int32)
    return (ids, jnp.ones_like(ids), jnp.zeros_like(ids)) if family == "bert" else (ids,)


def abstract_params(spec):
    """(model, parameter shapes): nothing is read or allocated, so 7B models work anywhere."""
    model = model_from_config(spec)
    shapes = jax.eval_shape(model.init, jax.random.key(0), *_example_inputs(spec.family))
    return model, shapes["params"]


def kernel_layout(model, family: str, params):
    """Matrix views of 3-D+ kernels (scanned layers); None when every kernel is 2-D."""
    if all(x.ndim <= 2 for x in jax.tree.leaves(params)):
        return None
    return morejax.kernel_layout(model, *_example_inputs(family))


def load_model(spec, seed: int = 0) -> Loaded:
    """Pretrained weights through the registry, or a random init of a named config."""
    from morejax.models import registry
    from morejax.models.tokenizer import load_tokenizer

    if spec.pretrained:
        kw = dict(
            scan_layers=spec.scan_layers, dtype=spec.dtype, seed=seed, **(spec.overrides or {})
        )
        if spec.family == "bert":
            kw.update(head=spec.head, num_labels=spec.num_labels)
        where = spec.checkpoint or spec.name
        if where not in registry.PRETRAINED and not os.path.isdir(where):
            raise FileNotFoundError(
                f"no weights for {spec.name!r}: set model.checkpoint to a local Hugging Face "
                f"folder or one of {sorted(registry.PRETRAINED)} (`params` needs no weights)"
            )
        pre = registry.load_pretrained(where, **kw)
        return Loaded(pre.model, pre.params, pre.tokenizer, spec.family)
    model = model_from_config(spec)
    init = jax.jit(model.init)  # the frozen weights come from model.seed, not the run's seed
    params = init(jax.random.key(spec.seed), *_example_inputs(spec.family))["params"]
    tokenizer = None
    if spec.tokenizer:
        where = spec.tokenizer
        tokenizer = load_tokenizer(
            where if os.path.exists(where) else registry.find_model_dir(where)
        )
    return Loaded(model, params, tokenizer, spec.family)


def fresh_head(loaded: Loaded, seed: int):
    """A classification head initialised from `seed` (None when the model has none).

    Every run seed gets its own head, in separate runs and in vectorised members alike.
    """
    if loaded.family != "bert" or "head" not in loaded.params:
        return None
    from morejax.models import bert

    cfg = loaded.model.config
    init = jax.jit(bert.BertClassificationHead(cfg).init)
    return init(jax.random.key(seed), jnp.zeros((1, 1, cfg.hidden_size), cfg.dtype))["params"]


PACKED_KEYS = ("segment_ids", "position_ids", "cls_index")


def model_inputs(family: str, batch) -> tuple:
    if family == "bert":
        return batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
    return batch["input_ids"], batch["attention_mask"]


def packed_inputs(batch) -> dict:
    """The keyword arguments of a packed batch (none for a padded one)."""
    if "cls_index" not in batch:
        return {}
    return {f"{k}_{s}": batch[k] for k, s in zip(PACKED_KEYS, ("BxL", "BxL", "GxS"))}
