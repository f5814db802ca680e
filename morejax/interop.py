"""Hugging Face interop: adapters to and from PEFT's on-disk layout, merged and MoRe exports.

Researchers train here and serve elsewhere, and PEFT's ``adapter_config.json`` +
``adapter_model.safetensors`` is what serving stacks read. This module maps morejax's
param paths to the Hugging Face module names of the matching task model (through the
``hf_rename`` / ``hf_inverse_rename`` helpers of each model family) and converts the
factors: Flax kernels are ``(in, out)``, torch Linear weights ``[out, in]``, so
``lora_A.weight = A.T`` ``(r, in)`` and ``lora_B.weight = B.T`` ``(out, r)``; the scale
(alpha / r, or alpha / sqrt(r) with rsLoRA) is the same number in both.

- ``export_peft``: LoRA, DoRA (``lora_magnitude_vector``), PiSSA and MiLoRA (either the
  rank-r adapter plus its residual base model, or a rank-2r LoRA over the original
  weights); trained heads and fully trained leaves go under ``modules_to_save``.
- ``export_merged``: K + ΔK of any method as a Hugging Face model folder.
- ``export_more``: MoRe's own adapter file (L, R) and a JSON that rebuilds it.
- ``import_peft`` / ``import_more``: read those folders back into morejax adapters.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from morejax.methods import DoRA, LoRA, MiLoRA, MoRe, PiSSA
from morejax.methods.more import block_shapes
from morejax.methods.svd import to_lora
from morejax.models import weights
from morejax.paths import unflatten
from morejax.transform import Adapter, Layout, merge

__all__ = [
    "HFModel",
    "hf_model",
    "export_peft",
    "export_merged",
    "export_more",
    "import_peft",
    "import_more",
    "initial_adapters",
    "flatten_adapters",
    "plain_params",
    "describe",
    "pretrained_leaves",
    "PEFT_CONFIG",
    "PEFT_WEIGHTS",
    "MORE_CONFIG",
    "MORE_WEIGHTS",
]

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
MORE_CONFIG = "more_config.json"
MORE_WEIGHTS = "more_adapter.safetensors"
_SVD = (PiSSA, MiLoRA)
PEFT_PREFIX = "base_model.model."  # PeftModel wraps the task model under this name
RESIDUAL_DIR = "base_model"  # where PiSSA/MiLoRA residuals (or a random-init base) are written
SVD_MODES = ("lora2r", "residual")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "merges.txt",
    "vocab.json",
)


# ----------------------------------------------------------------------------- model mapping


@dataclasses.dataclass(frozen=True)
class HFModel:
    """The Hugging Face class a morejax model corresponds to, and its tensor names.

    ``names`` maps a morejax leaf path to ``[(HF tensor name, layer, transform)]``
    (several for a scanned leaf); ``rename`` is the inverse used when reading.
    """

    family: str  # 'bert' | 'llama'
    config: Any
    architecture: str
    task_type: str
    prefix: str  # the task model's name for the encoder ('bert.'), '' for a bare encoder

    def names(self, path: tuple[str, ...]):
        from morejax.models import bert, llama

        if self.family == "bert":
            return bert.hf_inverse_rename(self.config, prefix=self.prefix)(tuple(path))
        return llama.hf_inverse_rename(self.config)(tuple(path))

    def rename(self):
        from morejax.models import bert, llama

        if self.family == "bert":
            return bert.hf_rename(self.config, include_head=True)
        return llama.hf_rename(self.config)

    def hf_config(self) -> dict:
        """``config.json`` for the task model (transformers' ``from_pretrained`` reads it)."""
        out = dict(self.config.to_hf_config(), architectures=[self.architecture])
        if self.family == "bert" and self.architecture.endswith("SequenceClassification"):
            out["num_labels"] = self.config.num_labels
            if self.config.num_labels == 1:
                out["problem_type"] = "regression"
        if self.family == "llama":
            out["torch_dtype"] = "float32"
        return out

    def always_saved(self, path: tuple[str, ...]) -> bool:
        """Leaves that never come from the pretrained checkpoint: morejax draws heads fresh."""
        return self.family == "bert" and path[0] == "head"


def hf_model(config, params) -> HFModel:
    """The HF counterpart of a model with this config; ``params`` tells whether it has a head."""
    from morejax.models import bert, llama

    if isinstance(config, bert.BertConfig):
        roberta = config.model_type == "roberta"
        name = "Roberta" if roberta else "Bert"
        if "head" in params:
            return HFModel(
                "bert",
                config,
                f"{name}ForSequenceClassification",
                "SEQ_CLS",
                "roberta." if roberta else "bert.",
            )
        return HFModel("bert", config, f"{name}Model", "FEATURE_EXTRACTION", "")
    if isinstance(config, llama.LlamaConfig):
        return HFModel("llama", config, llama.FAMILIES[config.model_type], "CAUSAL_LM", "")
    raise ValueError(
        f"no Hugging Face mapping for a {type(config).__name__}: interop supports the BERT "
        "family (BertConfig) and the LLaMA family (LlamaConfig)"
    )


# ----------------------------------------------------------------------------- tree helpers


def _is_adapter(x) -> bool:
    return isinstance(x, Adapter)


def flatten_adapters(tree) -> dict[tuple[str, ...], Any]:
    """{path tuple: leaf}, an ``Adapter`` node counting as one leaf."""
    leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_adapter)[0]
    return {tuple(str(getattr(k, "key", k)) for k in kp): v for kp, v in leaves}


def _np(x, dtype=None) -> np.ndarray:
    a = np.asarray(jax.device_get(x))
    return np.ascontiguousarray(a if dtype is None else a.astype(dtype))


def plain_params(base, adapters) -> dict:
    """base with the fully trained leaves put back (adapted kernels stay as in base)."""
    flat = flatten_adapters(base)
    for path, a in flatten_adapters(adapters).items():
        if not isinstance(a, Adapter):
            flat[path] = a
    return flat


def _module(hf_name: str) -> str:
    return hf_name.rsplit(".", 1)[0]


def _hf_names(hf: HFModel, path) -> list:
    try:
        return list(hf.names(path))
    except KeyError as e:
        raise ValueError(
            f"{'/'.join(path)} has no Hugging Face name in {hf.architecture}: {e.args[0]}"
        ) from None


def _pieces(hf: HFModel, path, value):
    """(module name, per-layer slice of `value`) for each HF tensor of a morejax leaf."""
    for name, layer, _ in _hf_names(hf, path):
        yield name, (value if layer is None else value[layer])


def _check_matrix(path, a: Adapter) -> None:
    if a.layout.n_in != 1 or a.layout.stack > 1:
        raise ValueError(
            f"{'/'.join(path)}: layout {a.layout} has no torch Linear counterpart (only 2-D "
            "kernels, optionally stacked once by nn.scan, are exported)"
        )


def _saved_modules(hf: HFModel, plain: dict, adapters) -> dict[str, np.ndarray]:
    """HF tensors of every module that holds a trained or freshly drawn leaf (PEFT's
    ``modules_to_save``): the whole module is written, its frozen leaves included."""
    trained = {p for p, a in flatten_adapters(adapters).items() if not isinstance(a, Adapter)}
    modules = set()
    for path in plain:
        if path in trained or hf.always_saved(path):
            modules |= {_module(n) for n, _, _ in _hf_names(hf, path)}
    adapted = {p for p, a in flatten_adapters(adapters).items() if isinstance(a, Adapter)}
    out = {}
    for path, leaf in plain.items():
        for name, layer, transform in _hf_names(hf, path):
            if _module(name) not in modules:
                continue
            if path in adapted:
                raise ValueError(
                    f"{'/'.join(path)} is adapted and also inside the fully trained module "
                    f"{_module(name)}: PEFT cannot hold both; make one of them frozen"
                )
            value = _np(leaf if layer is None else leaf[layer])
            out[name] = np.ascontiguousarray(transform(value) if transform else value)
    return out


# ----------------------------------------------------------------------------- initial adapters


def initial_adapters(adapters, original) -> dict:
    """The step-0 factors of each PiSSA/MiLoRA kernel, recomputed from the original weights.

    The SVD init is deterministic given the kernel, so the run's ``A0, B0`` need not be
    stored: ``{path: {'A', 'B'}}`` for every SVD-initialised adapter.
    """
    orig = flatten_adapters(original)
    out = {}
    for path, a in flatten_adapters(adapters).items():
        if not (isinstance(a, Adapter) and isinstance(a.method, (PiSSA, MiLoRA))):
            continue
        if path not in orig:
            raise ValueError(f"the original params have no {'/'.join(path)}")
        _check_matrix(path, a)
        kernel = jnp.asarray(orig[path])

        def init(k, method=a.method):
            return method.init(None, k)[0]

        out[path] = jax.vmap(init)(kernel) if a.layout.stack else init(kernel)
    return out


# ----------------------------------------------------------------------------- PEFT export


def _lora_numbers(method) -> dict:
    """(r, alpha, rslora, dora, dropout) of a method PEFT can hold; an error for the rest."""
    if isinstance(method, (LoRA, DoRA, PiSSA, MiLoRA)):
        alpha = getattr(method, "alpha", None)
        alpha = method.rank if alpha is None else alpha
        return dict(
            r=method.rank,
            alpha=alpha,
            rslora=bool(getattr(method, "rslora", False)),
            dora=isinstance(method, DoRA),
            dropout=float(method.dropout),
        )
    if isinstance(method, MoRe):
        raise ValueError(
            "MoRe has no PEFT equivalent: export it with --format more (its own adapter file) "
            "or --format merged (full Hugging Face weights)"
        )
    raise ValueError(f"{type(method).__name__} adapters cannot be written in PEFT's LoRA layout")


def _number(x):
    return int(x) if float(x).is_integer() else float(x)


def _target_modules(hf: HFModel, all_kernels: list, adapted: list[str]) -> list[str]:
    """Short names ('query') where they pick exactly the adapted modules, else full names."""
    every = {_module(n) for path in all_kernels for n, _, _ in _hf_names(hf, path)}
    adapted_set = set(adapted)
    out = []
    for short in sorted({m.rsplit(".", 1)[-1] for m in adapted_set}):
        same = {m for m in every if m == short or m.endswith("." + short)}
        if same <= adapted_set:
            out.append(short)
        else:
            out += sorted(m for m in adapted_set if m in same)
    return out


def export_peft(
    base,
    adapters,
    config,
    out_dir,
    *,
    base_model_name_or_path: str | None = None,
    svd_mode: str = "lora2r",
    original=None,
    initial=None,
    write_base: bool = False,
    tokenizer_from=None,
) -> Path:
    """Writes ``adapter_config.json`` + ``adapter_model.safetensors`` that PEFT loads.

    ``base, adapters`` come from ``morejax.adapt`` (or a restored checkpoint), ``config``
    is the model's config. PiSSA/MiLoRA: ``svd_mode='lora2r'`` writes a plain LoRA of rank
    2r (alpha 2α) over the original weights, ``ΔW = s(AB − A0B0)``; it needs ``initial``
    (the step-0 adapters) or ``original`` (the params before ``adapt``, from which the
    deterministic SVD init is recomputed). ``svd_mode='residual'`` writes the rank-r adapter
    and the residual base model in ``out_dir/base_model`` (the adapter needs that base).
    ``write_base`` writes the frozen base there too (a model with no HF checkpoint).
    """
    if svd_mode not in SVD_MODES:
        raise ValueError(f"svd_mode must be one of {SVD_MODES}, got {svd_mode!r}")
    out = Path(out_dir)
    plain = plain_params(base, adapters)
    hf = hf_model(config, unflatten(plain))
    flat = flatten_adapters(adapters)
    svd = {p for p, a in flat.items() if isinstance(a, Adapter) and isinstance(a.method, _SVD)}
    convert = bool(svd) and svd_mode == "lora2r"
    if convert and initial is None:
        if original is None:
            raise ValueError(
                "converting PiSSA/MiLoRA to a rank-2r LoRA needs the step-0 adapters "
                "(initial=) or the original weights (original=); or use svd_mode='residual'"
            )
        initial = initial_adapters(adapters, original)
    elif convert:
        initial = {
            p: (a.params if isinstance(a, Adapter) else a)
            for p, a in flatten_adapters(initial).items()
        }

    tensors: dict[str, np.ndarray] = {}
    per_module: dict[str, dict] = {}
    for path, a in flat.items():
        if not isinstance(a, Adapter):
            continue
        numbers = _lora_numbers(a.method)
        _check_matrix(path, a)
        params = a.params
        if convert and path in svd:
            params = to_lora(a.params, initial[path])
            numbers = dict(numbers, r=2 * numbers["r"], alpha=2 * numbers["alpha"])
        for name, layer, _ in _hf_names(hf, path):
            module = _module(name)
            key = PEFT_PREFIX + module

            def sl(x, layer=layer):
                return x if layer is None else x[layer]

            tensors[f"{key}.lora_A.weight"] = _np(sl(params["A"]), np.float32).T.copy()
            tensors[f"{key}.lora_B.weight"] = _np(sl(params["B"]), np.float32).T.copy()
            if numbers["dora"]:
                tensors[f"{key}.lora_magnitude_vector"] = _np(sl(params["m"]), np.float32)
            per_module[module] = numbers
    if not per_module:
        raise ValueError("no adapted kernel to export: the adapters hold only trained leaves")
    kinds = {(n["dora"], n["rslora"]) for n in per_module.values()}
    if len(kinds) > 1:
        raise ValueError(
            "PEFT holds one use_dora / use_rslora setting per adapter, but these adapters mix "
            f"them ({sorted(kinds)}); export them with --format merged instead"
        )
    saved = _saved_modules(hf, plain, adapters)
    tensors.update({PEFT_PREFIX + k: v for k, v in saved.items()})

    # The most common (r, alpha) is the default; the other modules get rank/alpha patterns.
    counts: dict[tuple, int] = {}
    for n in per_module.values():
        counts[(n["r"], n["alpha"])] = counts.get((n["r"], n["alpha"]), 0) + 1
    r, alpha = max(counts, key=lambda k: (counts[k], -k[0]))
    rank_pattern = {re.escape(m): n["r"] for m, n in per_module.items() if n["r"] != r}
    alpha_pattern = {
        re.escape(m): _number(n["alpha"]) for m, n in per_module.items() if n["alpha"] != alpha
    }
    dora, rslora = kinds.pop()

    residual_dir = None
    if (svd and svd_mode == "residual") or write_base:
        residual_dir = out / RESIDUAL_DIR
        written = plain
        if convert:  # the rank-2r LoRA applies to the original kernels: K_res + s·A0B0
            back = {p: Adapter(initial[p], flat[p].method, flat[p].layout) for p in svd}
            written = flatten_adapters(merge(unflatten(plain), unflatten(back)))
        export_merged(written, {}, config, residual_dir, tokenizer_from=tokenizer_from)
        base_model_name_or_path = str(residual_dir.absolute())
    all_kernels = [p for p, leaf in plain.items() if p[-1] == "kernel" and np.ndim(leaf) >= 2]
    modules_to_save = sorted({_module(k) for k in saved})
    cfg = {
        "peft_type": "LORA",
        "task_type": hf.task_type,
        "base_model_name_or_path": base_model_name_or_path,
        "revision": None,
        "inference_mode": True,
        "r": r,
        "lora_alpha": _number(alpha),
        "lora_dropout": max(n["dropout"] for n in per_module.values()),
        "target_modules": _target_modules(hf, all_kernels, sorted(per_module)),
        "modules_to_save": modules_to_save or None,
        "use_dora": dora,
        "use_rslora": rslora,
        "rank_pattern": rank_pattern,
        "alpha_pattern": alpha_pattern,
        "fan_in_fan_out": False,
        "bias": "none",
        "init_lora_weights": True,  # never "pissa": PEFT would re-split the base on load
        "layers_to_transform": None,
        "layers_pattern": None,
    }
    out.mkdir(parents=True, exist_ok=True)
    _save_tensors(tensors, out / PEFT_WEIGHTS, {"format": "pt"})
    (out / PEFT_CONFIG).write_text(json.dumps(cfg, indent=2) + "\n")
    if svd:
        note = (
            "rank-2r LoRA over the original weights"
            if convert
            else f"rank-r adapter over the residual base model in {RESIDUAL_DIR}/"
        )
        (out / "README.md").write_text(f"PiSSA/MiLoRA export from morejax: {note}.\n")
    return out


def _save_tensors(tensors: dict, path: Path, metadata: dict) -> None:
    """safetensors' file with the permissions any written file gets (the library's is 0600)."""
    from safetensors.numpy import save_file

    save_file(tensors, str(path), metadata=metadata)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


# ----------------------------------------------------------------------------- merged export


def export_merged(base, adapters, config, out_dir, *, tokenizer_from=None, dtype=None) -> Path:
    """K + ΔK of every adapter (any method) as a Hugging Face model folder transformers loads.

    ``base`` may be a flat ``{path tuple: leaf}`` dict or a nested tree. Writes
    ``config.json`` and ``model.safetensors`` (streamed, one tensor at a time), plus the
    tokenizer files found in ``tokenizer_from``.
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
    (out / "config.json").write_text(json.dumps(hf.hf_config(), indent=2) + "\n")
    weights.save_safetensors(params, out, hf.names, metadata={"format": "pt"})
    if tokenizer_from is not None:
        for name in TOKENIZER_FILES:
            src = Path(tokenizer_from) / name
            if src.is_file():
                shutil.copyfile(src, out / name)
    return out


# ----------------------------------------------------------------------------- MoRe export


def export_more(base, adapters, config, out_dir, *, base_model_name_or_path=None) -> Path:
    """MoRe's own format: ``more_adapter.safetensors`` + ``more_config.json``.

    Per adapted HF module ``M``: ``M.L`` of shape ``(nb_eff, rank, p)`` and ``M.R`` of
    shape ``(nb_eff, s, rank)`` (the official layout, see docs/methods.md); heads and fully
    trained modules under their HF names. The JSON holds what rebuilds each adapter.
    """
    plain = plain_params(base, adapters)
    hf = hf_model(config, unflatten(plain))
    tensors: dict[str, np.ndarray] = {}
    targets = {}
    for path, a in flatten_adapters(adapters).items():
        if not isinstance(a, Adapter):
            continue
        if not isinstance(a.method, MoRe):
            raise ValueError(
                f"{'/'.join(path)} is {type(a.method).__name__}, not MoRe: export it with "
                "--format peft or --format merged"
            )
        _check_matrix(path, a)
        d_in, d_out = a.layout.matrix_shape(np.shape(plain[path]))
        nb_eff, p, s = block_shapes(d_in, d_out, a.method.nblocks, a.method.block_out)
        for name, layer, _ in _hf_names(hf, path):
            module = _module(name)
            for k in ("L", "R"):
                v = a.params[k]
                tensors[f"{module}.{k}"] = _np(v if layer is None else v[layer], np.float32)
            targets[module] = dict(
                nblocks=a.method.nblocks,
                rank=a.method.rank,
                block_out=a.method.block_out,
                dropout=float(a.method.dropout),
                d_in=d_in,
                d_out=d_out,
                nb_eff=nb_eff,
                p=p,
                s=s,
            )
    if not targets:
        raise ValueError("no MoRe adapter to export")
    saved = _saved_modules(hf, plain, adapters)
    tensors.update(saved)
    cfg = {
        "format": "morejax-more",
        "format_version": 1,
        "base_model_name_or_path": base_model_name_or_path,
        "architecture": hf.architecture,
        "task_type": hf.task_type,
        "layout": {
            "L": "(nb_eff, rank, p): input block k -> rank features",
            "R": "(nb_eff, s, rank): rank features -> output block l, outputs interleaved "
            "t * nb_eff + l, first d_out kept",
            "weights": "torch Linear layout [out, in] for modules_to_save",
        },
        "targets": targets,
        "modules_to_save": sorted({_module(k) for k in saved}),
        "hf_config": hf.hf_config(),
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _save_tensors(tensors, out / MORE_WEIGHTS, {"format": "morejax-more"})
    (out / MORE_CONFIG).write_text(json.dumps(cfg, indent=2) + "\n")
    return out


# ----------------------------------------------------------------------------- import


def _read_dir(adapter_dir, config_name: str, weights_name: str) -> tuple[dict, dict]:
    d = Path(adapter_dir)
    cfg_file, w_file = d / config_name, d / weights_name
    if not cfg_file.is_file():
        raise FileNotFoundError(
            f"{d} has no {config_name}: point at the folder that holds {config_name} and "
            f"{weights_name}"
        )
    if not w_file.is_file():
        legacy = d / "adapter_model.bin"
        hint = " (adapter_model.bin is a pickle: re-save it with safetensors)" * legacy.is_file()
        raise FileNotFoundError(f"{d} has no {weights_name}{hint}")
    return json.loads(cfg_file.read_text()), dict(weights.safetensors_tensors(w_file))


def _target(hf: HFModel, rename, module: str, what: str):
    try:
        target = rename(f"{module}.weight")
    except KeyError:
        target = None
    if target is None or tuple(target[0])[-1] != "kernel":
        raise ValueError(
            f"the {what} names module {module!r}, which morejax's {hf.architecture} "
            f"({hf.family}) does not have as a dense layer: is it for another model?"
        )
    return tuple(target[0]), target[1]


def _pattern_value(patterns: dict, module: str, default):
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def _shapes_of(like) -> dict:
    return {p: tuple(np.shape(v)) for p, v in flatten_adapters(like).items()}


def _assemble(hf: HFModel, like, per_path: dict, plain_tensors: dict, what: str) -> dict:
    """Adapters tree from {kernel path: {layer or None: (method, params)}} and HF tensors
    of trained leaves, checked against the shapes of ``like`` (the model's params)."""
    shapes = _shapes_of(like)
    out = {}
    for path, layers in per_path.items():
        if path not in shapes:
            raise ValueError(
                f"the {what} adapts {'/'.join(path)}, which this model does not have: is it "
                "for another model?"
            )
        kernel_shape = shapes[path]
        stacked = None not in layers
        methods = {m for m, _ in layers.values()}
        if len(methods) > 1:
            raise ValueError(f"{'/'.join(path)}: layers of one stacked kernel differ: {methods}")
        method = methods.pop()
        if stacked:
            n = kernel_shape[0]
            missing = sorted(set(range(n)) - set(layers))
            if missing:
                raise ValueError(
                    f"the {what} adapts only some layers of the stacked (scan_layers) kernel "
                    f"{'/'.join(path)} (missing {missing}); load it with scan_layers=False"
                )
            params = {k: np.stack([layers[i][1][k] for i in range(n)]) for k in layers[0][1]}
            layout = Layout(1, 1)
        else:
            params = layers[None][1]
            layout = Layout(0, 1)
        d_in, d_out = layout.matrix_shape(kernel_shape)
        _check_factor_shapes(path, method, params, d_in, d_out, stacked, what)
        out[path] = Adapter({k: jnp.asarray(v) for k, v in params.items()}, method, layout)
    rename = hf.rename()
    layered: dict[tuple, dict] = {}
    for name, value in plain_tensors.items():
        try:
            target = rename(name)
        except KeyError:
            target = None
        if target is None:
            raise ValueError(
                f"the {what} holds {name!r}, which morejax's {hf.architecture} does not have: "
                "is it for another model?"
            )
        path, layer, transform = tuple(target[0]), target[1], target[2]
        value = np.asarray(transform(value) if transform else value)
        if path not in shapes:
            raise ValueError(f"the {what} holds {name!r} ({'/'.join(path)}): not in this model")
        if layer is None:
            if value.shape != shapes[path]:
                raise ValueError(
                    f"the {what} holds {name!r} of shape {value.shape}, the model expects "
                    f"{shapes[path]}: is it for another model (or another num_labels)?"
                )
            out[path] = jnp.asarray(value)
        else:
            layered.setdefault(path, {})[layer] = value
    for path, layers in layered.items():
        n = shapes[path][0]
        if sorted(layers) != list(range(n)):
            raise ValueError(f"the {what} trains only some layers of stacked {'/'.join(path)}")
        out[path] = jnp.asarray(np.stack([layers[i] for i in range(n)]))
    return unflatten(out)


def _check_factor_shapes(path, method, params, d_in, d_out, stacked, what):
    lead = 1 if stacked else 0
    if isinstance(method, MoRe):
        nb_eff, p, s = block_shapes(d_in, d_out, method.nblocks, method.block_out)
        want = {"L": (nb_eff, method.rank, p), "R": (nb_eff, s, method.rank)}
    else:
        want = {"A": (d_in, method.rank), "B": (method.rank, d_out)}
        if isinstance(method, DoRA):
            want["m"] = (d_out,)
    for k, shape in want.items():
        got = tuple(np.shape(params[k]))[lead:]
        if got != shape:
            raise ValueError(
                f"the {what}'s {k} for {'/'.join(path)} has shape {got}, a ({d_in}, {d_out}) "
                f"kernel needs {shape}: is it for another model?"
            )


def import_peft(adapter_dir, config, like) -> dict:
    """A PEFT LoRA or DoRA adapter folder as morejax adapters (for training or evaluation).

    ``like``: the model's params (arrays or shapes), which fix the paths, shapes and
    whether layers are stacked. Returns an adapters tree as ``morejax.adapt`` builds it:
    ``Adapter`` nodes (LoRA / DoRA with the folder's rank, alpha, rsLoRA, dropout) for the
    adapted kernels and plain arrays for ``modules_to_save`` tensors (e.g. the classifier).
    Use it with the unmodified pretrained params as ``base``.
    """
    cfg, tensors = _read_dir(adapter_dir, PEFT_CONFIG, PEFT_WEIGHTS)
    where = f"PEFT adapter in {adapter_dir}"
    if cfg.get("peft_type") != "LORA":
        raise ValueError(
            f"{where} is peft_type {cfg.get('peft_type')!r}; only LORA adapters (LoRA, DoRA) "
            "can be imported"
        )
    if cfg.get("fan_in_fan_out"):
        raise ValueError(f"{where} is fan_in_fan_out (GPT-2 Conv1D), which morejax lacks")
    if cfg.get("bias", "none") != "none" or cfg.get("lora_bias"):
        raise ValueError(f"{where} trains biases (bias={cfg.get('bias')!r}); not supported")
    dora, rslora = bool(cfg.get("use_dora")), bool(cfg.get("use_rslora"))
    if dora and rslora:
        raise ValueError(f"{where} is DoRA with rsLoRA scaling, which morejax's DoRA lacks")
    hf = hf_model(config, like)
    rename = hf.rename()
    factors: dict[str, dict] = {}
    plain: dict[str, np.ndarray] = {}
    suffixes = {
        ".lora_A.weight": "A",
        ".lora_B.weight": "B",
        ".lora_magnitude_vector": "m",
        ".lora_magnitude_vector.weight": "m",
    }
    for key, value in tensors.items():
        name = key.removeprefix(PEFT_PREFIX).replace(".modules_to_save.default.", ".")
        for suffix, k in suffixes.items():
            if name.endswith(suffix):
                factors.setdefault(name[: -len(suffix)], {})[k] = value
                break
        else:
            if ".lora_" in name:
                raise ValueError(f"{where} holds {key!r}: that kind of LoRA is not supported")
            plain[name] = value
    if not factors:
        raise ValueError(f"{where} holds no lora_A / lora_B tensors")
    per_path: dict[tuple, dict] = {}
    for module, f in sorted(factors.items()):
        if "A" not in f or "B" not in f or (dora and "m" not in f):
            raise ValueError(f"{where}: module {module} lacks some of lora_A / lora_B / magnitude")
        path, layer = _target(hf, rename, module, where)
        rank = int(f["A"].shape[0])
        alpha = _pattern_value(cfg.get("alpha_pattern"), module, cfg.get("lora_alpha", 8))
        dropout = float(cfg.get("lora_dropout") or 0.0)
        if dora:
            method = DoRA(rank=rank, alpha=_number(alpha), dropout=dropout)
        else:
            method = LoRA(rank=rank, alpha=_number(alpha), dropout=dropout, rslora=rslora)
        params = {
            "A": np.asarray(f["A"], np.float32).T.copy(),
            "B": np.asarray(f["B"], np.float32).T.copy(),
        }
        if dora:
            params["m"] = np.asarray(f["m"], np.float32).reshape(-1)
        per_path.setdefault(path, {})[layer] = (method, params)
    return _assemble(hf, like, per_path, plain, where)


def import_more(adapter_dir, config, like) -> dict:
    """An ``export_more`` folder back into morejax MoRe adapters (and its trained leaves)."""
    cfg, tensors = _read_dir(adapter_dir, MORE_CONFIG, MORE_WEIGHTS)
    where = f"MoRe adapter in {adapter_dir}"
    if cfg.get("format") != "morejax-more":
        raise ValueError(f"{where}: {MORE_CONFIG} is not a morejax MoRe export")
    hf = hf_model(config, like)
    rename = hf.rename()
    per_path: dict[tuple, dict] = {}
    for module, t in cfg["targets"].items():
        path, layer = _target(hf, rename, module, where)
        method = MoRe(
            nblocks=t["nblocks"], rank=t["rank"], dropout=t["dropout"], block_out=t["block_out"]
        )
        params = {k: np.asarray(tensors.pop(f"{module}.{k}"), np.float32) for k in ("L", "R")}
        per_path.setdefault(path, {})[layer] = (method, params)
    return _assemble(hf, like, per_path, tensors, where)


def pretrained_leaves(model_dir, config, like, paths) -> dict:
    """Leaves ``paths`` read from a Hugging Face checkpoint folder (e.g. BERT's pretrained
    pooler, which a PEFT adapter that trained only the classifier leaves as it was).

    Returns ``{path: array}`` for the paths found; the others are left out.
    """
    hf = hf_model(config, like)
    rename = hf.rename()
    shapes = _shapes_of(like)
    want = {tuple(p) for p in paths}
    found: dict[tuple, np.ndarray] = {}
    for name, tensor in weights.safetensors_tensors(model_dir):
        try:
            target = rename(name)
        except KeyError:
            continue
        if target is None or tuple(target[0]) not in want or target[1] is not None:
            continue
        path, _, transform = target
        value = np.asarray(transform(tensor) if transform else tensor)
        if value.shape == shapes.get(tuple(path)):
            found[tuple(path)] = value
    return found


def adapter_methods(adapters) -> dict[str, Any]:
    """{kernel path: method} of an adapters tree (for messages comparing two trees)."""
    return {
        "/".join(p): a.method
        for p, a in flatten_adapters(adapters).items()
        if isinstance(a, Adapter)
    }


def describe(adapters) -> str:
    """One line: each distinct method and the kernels it adapts, e.g. for error messages."""
    groups: dict[str, list[str]] = {}
    for path, method in adapter_methods(adapters).items():
        groups.setdefault(repr(method), []).append(path)
    trained = sorted(
        "/".join(p) for p, a in flatten_adapters(adapters).items() if not isinstance(a, Adapter)
    )
    parts = [
        f"{m} on {len(v)} kernel(s) ({', '.join(v[:3])}{', ...' * (len(v) > 3)})"
        for m, v in groups.items()
    ]
    if trained:
        parts.append(f"trained leaves {trained[:4]}{' ...' * (len(trained) > 4)}")
    return "; ".join(parts) or "(nothing)"


def warn_quantized(name: str) -> None:
    warnings.warn(
        f"{name}'s morejax weights are dequantised from a GGUF file; the adapter applies to the "
        "Hugging Face full-precision weights only approximately",
        stacklevel=2,
    )
