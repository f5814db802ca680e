"""The Hugging Face counterpart of a morejax model, and the helpers every format shares.

`HFModel` pairs a model with the `transformers` class that serves it and with its family's
one rename table, read both ways: `rename` (HF tensor name -> morejax leaf) to import,
`inverse` (morejax leaf -> HF tensors) to export. Flax kernels are `(in, out)`, torch Linear
weights `[out, in]`; the tables' transforms convert.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from pathlib import Path
from typing import Any

import jax
import numpy as np

from morejax.models import bert, llama, weights
from morejax.paths import flatten_keys
from morejax.transform import Adapter, is_adapter


@dataclasses.dataclass(frozen=True)
class HFModel:
    """The Hugging Face class a morejax model corresponds to, and its tensor names."""

    family: str  # 'bert' | 'llama'
    config: Any
    architecture: str
    task_type: str
    rename: weights.Rename  # HF tensor name -> (path, layer, transform)
    inverse: weights.InverseRename  # path -> [(HF tensor name, layer, transform)]

    def names(self, path: tuple[str, ...]) -> list:
        """The HF tensors of a leaf (several for a scanned one); a ValueError if it has none."""
        try:
            return list(self.inverse(tuple(path)))
        except KeyError as e:
            raise ValueError(
                f"{'/'.join(path)} has no Hugging Face name in {self.architecture}: {e.args[0]}"
            ) from None

    def hf_config(self, labels=None) -> dict:
        """``config.json`` for the task model (transformers' ``from_pretrained`` reads it);
        `labels`, the class names in head order, become its id2label / label2id."""
        out = dict(self.config.to_hf_config(), architectures=[self.architecture])
        if self.family == "bert" and self.architecture.endswith("SequenceClassification"):
            out["num_labels"] = self.config.num_labels
            if self.config.num_labels == 1:
                out["problem_type"] = "regression"
            elif labels is not None:
                if len(labels) != self.config.num_labels:
                    raise ValueError(
                        f"{len(labels)} class names for a head of {self.config.num_labels}"
                    )
                out["id2label"] = {str(i): str(name) for i, name in enumerate(labels)}
                out["label2id"] = {str(name): i for i, name in enumerate(labels)}
        if self.family == "llama":
            out["torch_dtype"] = "float32"
        return out

    def always_saved(self, path: tuple[str, ...]) -> bool:
        """Leaves that never come from the pretrained checkpoint: morejax draws heads fresh."""
        return self.family == "bert" and path[0] == "head"


def hf_model(config, params) -> HFModel:
    """The HF counterpart of a model with this config; ``params`` tells whether it has a head."""
    if isinstance(config, bert.BertConfig):
        name = "Roberta" if config.model_type == "roberta" else "Bert"
        rename = bert.hf_rename(config, include_head=True)
        if "head" in params:  # the encoder sits under 'bert.' / 'roberta.' in the task model
            inverse = bert.hf_inverse_rename(config, prefix=f"{name.lower()}.")
            return HFModel(
                "bert", config, f"{name}ForSequenceClassification", "SEQ_CLS", rename, inverse
            )
        inverse = bert.hf_inverse_rename(config)
        return HFModel("bert", config, f"{name}Model", "FEATURE_EXTRACTION", rename, inverse)
    if isinstance(config, llama.LlamaConfig):
        architecture = llama.FAMILIES[config.model_type]
        rename, inverse = llama.hf_rename(config), llama.hf_inverse_rename(config)
        return HFModel("llama", config, architecture, "CAUSAL_LM", rename, inverse)
    raise ValueError(
        f"no Hugging Face mapping for a {type(config).__name__}: interop supports the BERT "
        "family (BertConfig) and the LLaMA family (LlamaConfig)"
    )


def module_of(hf_name: str) -> str:
    """The torch module that holds a tensor ('bert.pooler.dense' of '...dense.weight')."""
    return hf_name.rsplit(".", 1)[0]


# ----------------------------------------------------------------------------- trees


def flatten_adapters(tree) -> dict[tuple[str, ...], Any]:
    """{path tuple of strings: leaf}, an ``Adapter`` node counting as one leaf."""
    return flatten_keys(tree, is_leaf=is_adapter, as_str=True)


def plain_params(base, adapters) -> dict:
    """base with the fully trained leaves put back (adapted kernels stay as in base)."""
    flat = flatten_adapters(base)
    for path, a in flatten_adapters(adapters).items():
        if not isinstance(a, Adapter):
            flat[path] = a
    return flat


def as_numpy(x, dtype=None) -> np.ndarray:
    a = np.asarray(jax.device_get(x))
    return np.ascontiguousarray(a if dtype is None else a.astype(dtype))


def check_matrix(path, a: Adapter) -> None:
    if a.layout.n_in != 1 or a.layout.stack > 1:
        raise ValueError(
            f"{'/'.join(path)}: layout {a.layout} has no torch Linear counterpart (only 2-D "
            "kernels, optionally stacked once by nn.scan, are exported)"
        )


# ----------------------------------------------------------------------------- writing


def saved_modules(hf: HFModel, plain: dict, adapters) -> dict[str, np.ndarray]:
    """HF tensors of every module that holds a trained or freshly drawn leaf (PEFT's
    ``modules_to_save``): the whole module is written, its frozen leaves included."""
    flat = flatten_adapters(adapters)
    trained = {p for p, a in flat.items() if not isinstance(a, Adapter)}
    adapted = {p for p, a in flat.items() if isinstance(a, Adapter)}
    modules = set()
    for path in plain:
        if path in trained or hf.always_saved(path):
            modules |= {module_of(n) for n, _, _ in hf.names(path)}
    out = {}
    for path, leaf in plain.items():
        for name, layer, transform in hf.names(path):
            if module_of(name) not in modules:
                continue
            if path in adapted:
                raise ValueError(
                    f"{'/'.join(path)} is adapted and also inside the fully trained module "
                    f"{module_of(name)}: PEFT cannot hold both; make one of them frozen"
                )
            value = as_numpy(leaf if layer is None else leaf[layer])
            out[name] = np.ascontiguousarray(transform(value) if transform else value)
    return out


def write_dir(
    out_dir, config_name: str, weights_name: str, cfg: dict, tensors: dict, metadata: dict
) -> Path:
    """The adapter folder `importing.read_dir` reads back: the tensors, then the JSON config.

    The safetensors file gets the permissions any written file gets (the library's is 0600)."""
    from safetensors.numpy import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / weights_name), metadata=metadata)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(out / weights_name, 0o666 & ~umask)
    (out / config_name).write_text(json.dumps(cfg, indent=2) + "\n")
    return out


def warn_quantized(name: str) -> None:
    warnings.warn(
        f"{name}'s morejax weights are dequantised from a GGUF file; the adapter applies to the "
        "Hugging Face full-precision weights only approximately",
        stacklevel=2,
    )
