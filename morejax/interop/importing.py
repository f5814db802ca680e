"""Reading an adapter folder back: morejax adapters from Hugging Face tensors, whatever the format.

A format's reader (`peft.import_peft`, `more_format.import_more`) turns its tensors into
factors per adapted HF module; `assemble` places them on the model's leaves through the
family's rename table, stacks the layers of scanned kernels and checks every shape against
the model, so a folder for another model fails with a message that says so.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from morejax.interop.hf import HFModel, flatten_adapters, hf_model
from morejax.methods import DoRA, MoRe
from morejax.methods.more import block_shapes
from morejax.models import weights
from morejax.paths import unflatten
from morejax.transform import Adapter, Layout


def read_dir(adapter_dir, config_name: str, weights_name: str) -> tuple[dict, dict]:
    """(the folder's JSON config, its tensors by name)."""
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


def kernel_of(hf: HFModel, module: str, what: str) -> tuple[tuple[str, ...], int | None]:
    """(kernel path, layer) of the dense HF module an adapter names."""
    target = weights.known_target(hf.rename, f"{module}.weight")
    if target is None or target.path[-1] != "kernel":
        raise ValueError(
            f"the {what} names module {module!r}, which morejax's {hf.architecture} "
            f"({hf.family}) does not have as a dense layer: is it for another model?"
        )
    return target.path, target.layer


def _shapes_of(like) -> dict:
    return {p: tuple(np.shape(v)) for p, v in flatten_adapters(like).items()}


def assemble(hf: HFModel, like, per_path: dict, plain_tensors: dict, what: str) -> dict:
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
        out[path] = _adapter(path, layers, shapes[path], what)
    out.update(_trained_leaves(hf, plain_tensors, shapes, what))
    return unflatten(out)


def _adapter(path, layers: dict, kernel_shape: tuple, what: str) -> Adapter:
    """One kernel's Adapter from its factors per layer (one entry, None, for a plain kernel)."""
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
    return Adapter({k: jnp.asarray(v) for k, v in params.items()}, method, layout)


def _trained_leaves(hf: HFModel, plain_tensors: dict, shapes: dict, what: str) -> dict:
    """{path: array} of the fully trained leaves among the folder's HF tensors."""
    out, layered = {}, {}
    for name, tensor in plain_tensors.items():
        target = weights.known_target(hf.rename, name)
        if target is None:
            raise ValueError(
                f"the {what} holds {name!r}, which morejax's {hf.architecture} does not have: "
                "is it for another model?"
            )
        path, value = target.path, target.value(tensor)
        if path not in shapes:
            raise ValueError(f"the {what} holds {name!r} ({'/'.join(path)}): not in this model")
        if target.layer is None:
            if value.shape != shapes[path]:
                raise ValueError(
                    f"the {what} holds {name!r} of shape {value.shape}, the model expects "
                    f"{shapes[path]}: is it for another model (or another num_labels)?"
                )
            out[path] = jnp.asarray(value)
        else:
            layered.setdefault(path, {})[target.layer] = value
    for path, layers in layered.items():
        n = shapes[path][0]
        if sorted(layers) != list(range(n)):
            raise ValueError(f"the {what} trains only some layers of stacked {'/'.join(path)}")
        out[path] = jnp.asarray(np.stack([layers[i] for i in range(n)]))
    return out


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


def pretrained_leaves(model_dir, config, like, paths) -> dict:
    """Leaves ``paths`` read from a Hugging Face checkpoint folder (e.g. BERT's pretrained
    pooler, which a PEFT adapter that trained only the classifier leaves as it was).

    Returns ``{path: array}`` for the paths found; the others are left out.
    """
    hf = hf_model(config, like)
    shapes = _shapes_of(like)
    want = {tuple(p) for p in paths}
    found: dict[tuple, np.ndarray] = {}
    for name, tensor in weights.safetensors_tensors(model_dir):
        target = weights.known_target(hf.rename, name)
        if target is None or target.path not in want or target.layer is not None:
            continue
        value = target.value(tensor)
        if value.shape == shapes.get(target.path):
            found[target.path] = value
    return found
