"""MoRe's own adapter format (`more_adapter.safetensors` + `more_config.json`), written and read.

PEFT has no MoRe, so its factors are written in the official layout (docs/methods.md): per
adapted HF module `M`, `M.L` of shape `(nb_eff, rank, p)` and `M.R` of shape
`(nb_eff, s, rank)`; heads and fully trained modules under their HF names. The JSON holds
what rebuilds each adapter.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from morejax.interop.hf import (
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
from morejax.methods import MoRe
from morejax.methods.more import block_shapes
from morejax.paths import unflatten
from morejax.transform import Adapter

MORE_CONFIG = "more_config.json"
MORE_WEIGHTS = "more_adapter.safetensors"
_LAYOUT = {
    "L": "(nb_eff, rank, p): input block k -> rank features",
    "R": "(nb_eff, s, rank): rank features -> output block l, outputs interleaved "
    "t * nb_eff + l, first d_out kept",
    "weights": "torch Linear layout [out, in] for modules_to_save",
}


def export_more(base, adapters, config, out_dir, *, base_model_name_or_path=None) -> Path:
    """MoRe's own format: ``more_adapter.safetensors`` + ``more_config.json``."""
    plain = plain_params(base, adapters)
    hf = hf_model(config, unflatten(plain))
    tensors, targets = _more_tensors(hf, plain, adapters)
    saved = saved_modules(hf, plain, adapters)
    tensors.update(saved)
    cfg = {
        "format": "morejax-more",
        "format_version": 1,
        "base_model_name_or_path": base_model_name_or_path,
        "architecture": hf.architecture,
        "task_type": hf.task_type,
        "layout": _LAYOUT,
        "targets": targets,
        "modules_to_save": sorted({module_of(k) for k in saved}),
        "hf_config": hf.hf_config(),
    }
    return write_dir(out_dir, MORE_CONFIG, MORE_WEIGHTS, cfg, tensors, {"format": "morejax-more"})


def _more_tensors(hf, plain: dict, adapters) -> tuple[dict, dict]:
    """({'M.L' / 'M.R': factors}, {M: what rebuilds its adapter}) per adapted HF module."""
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
        check_matrix(path, a)
        d_in, d_out = a.layout.matrix_shape(np.shape(plain[path]))
        nb_eff, p, s = block_shapes(d_in, d_out, a.method.nblocks, a.method.block_out)
        for name, layer, _ in hf.names(path):
            module = module_of(name)
            for k in ("L", "R"):
                v = a.params[k]
                tensors[f"{module}.{k}"] = as_numpy(v if layer is None else v[layer], np.float32)
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
    return tensors, targets


def import_more(adapter_dir, config, like) -> dict:
    """An ``export_more`` folder back into morejax MoRe adapters (and its trained leaves)."""
    cfg, tensors = read_dir(adapter_dir, MORE_CONFIG, MORE_WEIGHTS)
    where = f"MoRe adapter in {adapter_dir}"
    if cfg.get("format") != "morejax-more":
        raise ValueError(f"{where}: {MORE_CONFIG} is not a morejax MoRe export")
    hf = hf_model(config, like)
    per_path: dict[tuple, dict] = {}
    for module, t in cfg["targets"].items():
        path, layer = kernel_of(hf, module, where)
        method = MoRe(
            nblocks=t["nblocks"], rank=t["rank"], dropout=t["dropout"], block_out=t["block_out"]
        )
        params = {k: np.asarray(tensors.pop(f"{module}.{k}"), np.float32) for k in ("L", "R")}
        per_path.setdefault(path, {})[layer] = (method, params)
    return assemble(hf, like, per_path, tensors, where)
