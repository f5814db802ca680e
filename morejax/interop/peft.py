"""PEFT's LoRA layout (`adapter_config.json` + `adapter_model.safetensors`), written and read.

Serving stacks read this layout. The factors convert as `lora_A.weight = A.T` `(r, in)` and
`lora_B.weight = B.T` `(out, r)`; the scale (alpha / r, or alpha / sqrt(r) with rsLoRA) is the
same number in both. LoRA, DoRA (`lora_magnitude_vector`), PiSSA and MiLoRA are written: the
SVD methods as a rank-2r LoRA over the original weights, or as the rank-r adapter with its
residual base model. Trained heads and leaves go under `modules_to_save`.
"""

from __future__ import annotations

import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from morejax.interop.hf import (
    HFModel,
    as_numpy,
    check_matrix,
    flatten_adapters,
    hf_model,
    module_of,
    plain_params,
    saved_modules,
    write_dir,
)
from morejax.interop.importing import assemble, kernel_of, read_dir
from morejax.interop.merged import export_merged
from morejax.methods import DoRA, LoRA, MiLoRA, MoRe, PiSSA
from morejax.methods.svd import to_lora
from morejax.paths import unflatten
from morejax.transform import Adapter, merge

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."  # PeftModel wraps the task model under this name
RESIDUAL_DIR = "base_model"  # where PiSSA/MiLoRA residuals (or a random-init base) are written
SVD_MODES = ("lora2r", "residual")
_SVD = (PiSSA, MiLoRA)


def initial_adapters(adapters, original) -> dict:
    """The step-0 factors of each PiSSA/MiLoRA kernel, recomputed from the original weights.

    The SVD init is deterministic given the kernel, so the run's ``A0, B0`` need not be
    stored: ``{path: {'A', 'B'}}`` for every SVD-initialised adapter.
    """
    orig = flatten_adapters(original)
    out = {}
    for path, a in flatten_adapters(adapters).items():
        if not (isinstance(a, Adapter) and isinstance(a.method, _SVD)):
            continue
        if path not in orig:
            raise ValueError(f"the original params have no {'/'.join(path)}")
        check_matrix(path, a)
        kernel = jnp.asarray(orig[path])

        def init(k, method=a.method):
            return method.init(None, k)[0]

        out[path] = jax.vmap(init)(kernel) if a.layout.stack else init(kernel)
    return out


# ----------------------------------------------------------------------------- export


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
    step0 = _step0(adapters, svd, svd_mode, initial, original)
    tensors, per_module = _lora_tensors(hf, flat, svd, step0)
    saved = saved_modules(hf, plain, adapters)
    tensors.update({PEFT_PREFIX + k: v for k, v in saved.items()})
    if (svd and svd_mode == "residual") or write_base:
        base_dir = out / RESIDUAL_DIR
        _write_base(base_dir, plain, flat, svd, step0, config, tokenizer_from)
        base_model_name_or_path = str(base_dir.absolute())
    all_kernels = [p for p, leaf in plain.items() if p[-1] == "kernel" and np.ndim(leaf) >= 2]
    targets = _target_modules(hf, all_kernels, sorted(per_module))
    modules_to_save = sorted({module_of(k) for k in saved})
    cfg = _adapter_config(hf, per_module, base_model_name_or_path, targets, modules_to_save)
    write_dir(out, PEFT_CONFIG, PEFT_WEIGHTS, cfg, tensors, {"format": "pt"})
    if svd:
        note = (
            "rank-2r LoRA over the original weights"
            if step0 is not None
            else f"rank-r adapter over the residual base model in {RESIDUAL_DIR}/"
        )
        (out / "README.md").write_text(f"PiSSA/MiLoRA export from morejax: {note}.\n")
    return out


def _step0(adapters, svd: set, svd_mode: str, initial, original) -> dict | None:
    """{path: step-0 factors} when PiSSA/MiLoRA become a rank-2r LoRA, else None."""
    if not svd or svd_mode != "lora2r":
        return None
    if initial is not None:
        return {
            p: (a.params if isinstance(a, Adapter) else a)
            for p, a in flatten_adapters(initial).items()
        }
    if original is None:
        raise ValueError(
            "converting PiSSA/MiLoRA to a rank-2r LoRA needs the step-0 adapters "
            "(initial=) or the original weights (original=); or use svd_mode='residual'"
        )
    return initial_adapters(adapters, original)


def _lora_tensors(hf: HFModel, flat: dict, svd: set, step0: dict | None):
    """(PEFT tensors by name, LoRA numbers per HF module) of every adapted kernel."""
    tensors: dict[str, np.ndarray] = {}
    per_module: dict[str, dict] = {}
    for path, a in flat.items():
        if not isinstance(a, Adapter):
            continue
        numbers = _lora_numbers(a.method)
        check_matrix(path, a)
        params = a.params
        if step0 is not None and path in svd:
            params = to_lora(a.params, step0[path])
            numbers = dict(numbers, r=2 * numbers["r"], alpha=2 * numbers["alpha"])
        for name, layer, _ in hf.names(path):
            module = module_of(name)
            key = PEFT_PREFIX + module

            def sl(x, layer=layer):
                return x if layer is None else x[layer]

            tensors[f"{key}.lora_A.weight"] = as_numpy(sl(params["A"]), np.float32).T.copy()
            tensors[f"{key}.lora_B.weight"] = as_numpy(sl(params["B"]), np.float32).T.copy()
            if numbers["dora"]:
                tensors[f"{key}.lora_magnitude_vector"] = as_numpy(sl(params["m"]), np.float32)
            per_module[module] = numbers
    if not per_module:
        raise ValueError("no adapted kernel to export: the adapters hold only trained leaves")
    kinds = {(n["dora"], n["rslora"]) for n in per_module.values()}
    if len(kinds) > 1:
        raise ValueError(
            "PEFT holds one use_dora / use_rslora setting per adapter, but these adapters mix "
            f"them ({sorted(kinds)}); export them with --format merged instead"
        )
    return tensors, per_module


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


def _write_base(directory: Path, plain, flat, svd, step0, config, tokenizer_from) -> None:
    """The base model the adapter applies to: the frozen weights (PiSSA/MiLoRA residuals),
    or, when the adapter is a rank-2r LoRA, the original kernels K_res + s·A0B0."""
    written = plain
    if step0 is not None:
        back = {p: Adapter(step0[p], flat[p].method, flat[p].layout) for p in svd}
        written = flatten_adapters(merge(unflatten(plain), unflatten(back)))
    export_merged(written, {}, config, directory, tokenizer_from=tokenizer_from)


def _adapter_config(hf, per_module: dict, base_name, targets, modules_to_save) -> dict:
    """``adapter_config.json``: the most common (r, alpha) is the default, the other modules
    get rank and alpha patterns."""
    counts: dict[tuple, int] = {}
    for n in per_module.values():
        counts[(n["r"], n["alpha"])] = counts.get((n["r"], n["alpha"]), 0) + 1
    r, alpha = max(counts, key=lambda k: (counts[k], -k[0]))
    ((dora, rslora),) = {(n["dora"], n["rslora"]) for n in per_module.values()}
    return {
        "peft_type": "LORA",
        "task_type": hf.task_type,
        "base_model_name_or_path": base_name,
        "revision": None,
        "inference_mode": True,
        "r": r,
        "lora_alpha": _number(alpha),
        "lora_dropout": max(n["dropout"] for n in per_module.values()),
        "target_modules": targets,
        "modules_to_save": modules_to_save or None,
        "use_dora": dora,
        "use_rslora": rslora,
        "rank_pattern": {re.escape(m): n["r"] for m, n in per_module.items() if n["r"] != r},
        "alpha_pattern": {
            re.escape(m): _number(n["alpha"]) for m, n in per_module.items() if n["alpha"] != alpha
        },
        "fan_in_fan_out": False,
        "bias": "none",
        "init_lora_weights": True,  # never "pissa": PEFT would re-split the base on load
        "layers_to_transform": None,
        "layers_pattern": None,
    }


def _number(x):
    return int(x) if float(x).is_integer() else float(x)


def _target_modules(hf: HFModel, all_kernels: list, adapted: list[str]) -> list[str]:
    """Short names ('query') where they pick exactly the adapted modules, else full names."""
    every = {module_of(n) for path in all_kernels for n, _, _ in hf.names(path)}
    adapted_set = set(adapted)
    out = []
    for short in sorted({m.rsplit(".", 1)[-1] for m in adapted_set}):
        same = {m for m in every if m == short or m.endswith("." + short)}
        if same <= adapted_set:
            out.append(short)
        else:
            out += sorted(m for m in adapted_set if m in same)
    return out


# ----------------------------------------------------------------------------- import


_FACTORS = {
    ".lora_A.weight": "A",
    ".lora_B.weight": "B",
    ".lora_magnitude_vector": "m",
    ".lora_magnitude_vector.weight": "m",
}


def import_peft(adapter_dir, config, like) -> dict:
    """A PEFT LoRA or DoRA adapter folder as morejax adapters (for training or evaluation).

    ``like``: the model's params (arrays or shapes), which fix the paths, shapes and
    whether layers are stacked. Returns an adapters tree as ``morejax.adapt`` builds it:
    ``Adapter`` nodes (LoRA / DoRA with the folder's rank, alpha, rsLoRA, dropout) for the
    adapted kernels and plain arrays for ``modules_to_save`` tensors (e.g. the classifier).
    Use it with the unmodified pretrained params as ``base``.
    """
    cfg, tensors = read_dir(adapter_dir, PEFT_CONFIG, PEFT_WEIGHTS)
    where = f"PEFT adapter in {adapter_dir}"
    dora = _check_config(cfg, where)
    hf = hf_model(config, like)
    factors, plain = _split_tensors(tensors, where)
    per_path: dict[tuple, dict] = {}
    for module, f in sorted(factors.items()):
        if "A" not in f or "B" not in f or (dora and "m" not in f):
            raise ValueError(f"{where}: module {module} lacks some of lora_A / lora_B / magnitude")
        path, layer = kernel_of(hf, module, where)
        params = {
            "A": np.asarray(f["A"], np.float32).T.copy(),
            "B": np.asarray(f["B"], np.float32).T.copy(),
        }
        if dora:
            params["m"] = np.asarray(f["m"], np.float32).reshape(-1)
        rank = int(f["A"].shape[0])
        per_path.setdefault(path, {})[layer] = (_method(cfg, module, rank), params)
    return assemble(hf, like, per_path, plain, where)


def _check_config(cfg: dict, where: str) -> bool:
    """Whether the adapter is DoRA; an error for what morejax cannot hold."""
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
    return dora


def _split_tensors(tensors: dict, where: str) -> tuple[dict, dict]:
    """({module: {'A', 'B', 'm'}}, {HF name: tensor} of modules_to_save), PEFT's wrapping
    names removed."""
    factors: dict[str, dict] = {}
    plain: dict[str, np.ndarray] = {}
    for key, value in tensors.items():
        name = key.removeprefix(PEFT_PREFIX).replace(".modules_to_save.default.", ".")
        for suffix, k in _FACTORS.items():
            if name.endswith(suffix):
                factors.setdefault(name[: -len(suffix)], {})[k] = value
                break
        else:
            if ".lora_" in name:
                raise ValueError(f"{where} holds {key!r}: that kind of LoRA is not supported")
            plain[name] = value
    if not factors:
        raise ValueError(f"{where} holds no lora_A / lora_B tensors")
    return factors, plain


def _method(cfg: dict, module: str, rank: int):
    """The LoRA or DoRA of one module, its alpha from the folder's alpha_pattern."""
    alpha = _number(_pattern_value(cfg.get("alpha_pattern"), module, cfg.get("lora_alpha", 8)))
    dropout = float(cfg.get("lora_dropout") or 0.0)
    if cfg.get("use_dora"):
        return DoRA(rank=rank, alpha=alpha, dropout=dropout)
    return LoRA(rank=rank, alpha=alpha, dropout=dropout, rslora=bool(cfg.get("use_rslora")))


def _pattern_value(patterns: dict, module: str, default):
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default
