"""Hugging Face safetensors I/O shared by every model family.

Reading is streamed (one tensor at a time) and loading fills preallocated leaves in
place, so a checkpoint never exists twice in memory. The model-specific part is a
``rename`` function (HF name -> morejax path) that each model family provides.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

import jax
import ml_dtypes
import numpy as np

from morejax.paths import flatten_dict, path_str, unflatten

__all__ = [
    "Rename",
    "InverseRename",
    "Target",
    "target",
    "known_target",
    "safetensors_files",
    "safetensors_tensors",
    "load_params",
    "save_safetensors",
]

# rename(hf_name) -> None (ignore the tensor) or (path, layer_index, transform).
# A rename raises KeyError for a name it does not know; load_params reports those.
Rename = Callable[[str], "tuple[tuple[str, ...], int | None, Callable | None] | None"]
# inverse_rename(path) -> list of (hf_name, layer_index, transform) pieces of that leaf.
InverseRename = Callable[[tuple[str, ...]], "Iterable[tuple[str, int | None, Callable | None]]"]


@dataclasses.dataclass(frozen=True)
class Target:
    """Where a rename puts one checkpoint tensor: a leaf, its layer in a stacked (scanned)
    leaf or None for the whole leaf, and the transform from the checkpoint's layout."""

    path: tuple[str, ...]
    layer: int | None
    transform: Callable | None

    def value(self, tensor) -> np.ndarray:
        """The tensor as the leaf holds it (a torch Linear weight transposed to a kernel)."""
        return np.asarray(self.transform(tensor) if self.transform is not None else tensor)


def target(rename: Rename, name: str) -> Target | None:
    """Where `rename` puts the tensor `name`; None for one the model ignores (rotary buffers,
    a tied lm_head). A name the rename does not know raises KeyError."""
    found = rename(name)
    return None if found is None else Target(tuple(found[0]), found[1], found[2])


def known_target(rename: Rename, name: str) -> Target | None:
    """`target`, with names the rename does not know also None: for reading part of a
    checkpoint, or an adapter folder whose names each caller checks."""
    try:
        return target(rename, name)
    except KeyError:
        return None


INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"

# safetensors dtype tags; ml_dtypes covers what numpy lacks (bf16, fp8).
_DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U64": np.dtype(np.uint64),
    "U32": np.dtype(np.uint32),
    "U16": np.dtype(np.uint16),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_TAGS = {v: k for k, v in _DTYPES.items()}


# --------------------------------------------------------------------------- reading


def safetensors_files(path: str | os.PathLike) -> list[Path]:
    """The shard files behind a checkpoint path, in index order."""
    p = Path(path)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise FileNotFoundError(f"no safetensors checkpoint at {p}")
    if (p / SINGLE_NAME).is_file():
        return [p / SINGLE_NAME]
    index = p / INDEX_NAME
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = list(dict.fromkeys(weight_map.values()))  # unique, first-seen order
        missing = [f for f in files if not (p / f).is_file()]
        if missing:
            raise FileNotFoundError(f"{index} names shards that are missing: {missing}")
        return [p / f for f in files]
    found = sorted(p.glob("*.safetensors"))
    if len(found) == 1:
        return found
    raise FileNotFoundError(
        f"{p} has neither {SINGLE_NAME} nor {INDEX_NAME}"
        + (f" (and {len(found)} other .safetensors files, which is ambiguous)" if found else "")
    )


# safetensors' numpy backend reads F64..BF16, ints and bool (bf16 as ml_dtypes.bfloat16 since
# 0.6). Measured with safetensors 0.8.0 / numpy 2.4: FP8 fails there (it looks for
# `numpy.float8_e4m3fn`, which numpy lacks), and so does the flax backend, so FP8 tensors
# (and BF16 on a safetensors too old for it) are read from their byte range instead.
_RAW_ONLY = ("F8_E4M3", "F8_E5M2")


def _fp8_reader(path: Path):
    """Reads one tensor from its byte range; the offsets come from the file's JSON header."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    start = 8 + n

    def read(name: str) -> np.ndarray:
        info = header[name]
        begin, end = info["data_offsets"]
        with open(path, "rb") as f:
            f.seek(start + begin)
            buf = f.read(end - begin)
        return np.frombuffer(buf, dtype=_DTYPES[info["dtype"]]).reshape(info["shape"]).copy()

    return read


def safetensors_tensors(path: str | os.PathLike) -> Iterator[tuple[str, np.ndarray]]:
    """Yields (name, array) one tensor at a time from a file, a dir, or a sharded dir."""
    from safetensors import safe_open

    for file in safetensors_files(path):
        raw = None
        with safe_open(str(file), framework="numpy") as f:
            for name in f.keys():
                tag = f.get_slice(name).get_dtype()
                if tag not in _RAW_ONLY:
                    try:
                        yield name, f.get_tensor(name)
                        continue
                    except (TypeError, AttributeError):
                        if tag != "BF16":  # only BF16 may be missing from an older library
                            raise
                raw = raw or _fp8_reader(file)
                yield name, raw(name)


# --------------------------------------------------------------------------- loading


def load_params(
    abstract_params: Mapping,
    named_tensors: Iterable[tuple[str, np.ndarray]],
    rename: Rename,
    *,
    dtype=None,
    unknown: str = "warn",
) -> dict:
    """Fills a params tree shaped like ``abstract_params`` from checkpoint tensors.

    Each leaf is allocated once in its final dtype (``dtype`` for floating leaves
    when given, else the abstract leaf's) and filled in place; leaves become jax
    arrays one by one. Errors: the first tensor whose shape does not fit, a
    tensor mapped to a path the model lacks, a leaf (or layer slice) filled twice,
    and leaves left unfilled. Names the rename does not know (it raises
    ``KeyError``) are collected and warned about (``unknown='warn'``), raised
    (``'error'``) or dropped silently (``'ignore'``).
    """
    if unknown not in ("warn", "error", "ignore"):
        raise ValueError(f"unknown must be 'warn', 'error' or 'ignore', got {unknown!r}")
    targets = flatten_dict(abstract_params)
    buffers: dict[tuple[str, ...], np.ndarray] = {}
    filled: dict[tuple[str, ...], set | bool] = {}
    unknown_names: list[str] = []

    def buffer(path):
        if path not in buffers:
            leaf = targets[path]
            dt = np.dtype(leaf.dtype)
            if dtype is not None and np.issubdtype(dt, np.inexact):
                dt = np.dtype(dtype)
            buffers[path] = np.empty(leaf.shape, dtype=dt)
        return buffers[path]

    for name, tensor in named_tensors:
        try:
            found = target(rename, name)
        except KeyError:
            unknown_names.append(name)
            continue
        if found is None:
            continue
        path, layer = found.path, found.layer
        if path not in targets:
            raise ValueError(
                f"checkpoint tensor {name!r} maps to {path_str(path)}, which this model does not "
                f"have: is this checkpoint for another model (e.g. more layers)?"
            )
        value = found.value(tensor)
        where = _checked_slot(name, tensor, value, found, tuple(targets[path].shape))
        buf = buffer(path)
        if layer is None:
            if filled.get(path):
                raise ValueError(f"checkpoint tensor {name!r} fills {where} a second time")
            buf[...] = value
            filled[path] = True
        else:
            done = filled.setdefault(path, set())
            if done is True or layer in done:
                raise ValueError(f"checkpoint tensor {name!r} fills {where} a second time")
            buf[layer] = value
            done.add(layer)
        del value, tensor

    if unknown_names:
        _report_unknown(unknown_names, unknown)
    _check_filled(targets, filled)

    out = {}
    for path in targets:
        # Leaf by leaf, each transfer finished before the next starts: device_put is
        # asynchronous and keeps its host buffer alive until done, so without the wait every
        # host buffer outlives the loop and the checkpoint is held twice.
        out[path] = jax.device_put(buffers.pop(path)).block_until_ready()
    return unflatten(out)


def _checked_slot(name: str, tensor, value, found: Target, leaf_shape: tuple) -> str:
    """Where a tensor goes ('path', or 'path[layer]' in a stacked leaf); an error naming the
    tensor if its shape does not fit there."""
    where = path_str(found.path)
    if found.layer is None:
        expected = leaf_shape
    else:
        if not leaf_shape or not 0 <= found.layer < leaf_shape[0]:
            raise ValueError(
                f"checkpoint tensor {name!r} is layer {found.layer} but morejax's stacked leaf "
                f"{where} has shape {leaf_shape}: is this checkpoint for another model?"
            )
        expected = leaf_shape[1:]
        where = f"{where}[{found.layer}]"
    if value.shape != expected:
        shown = tuple(np.shape(tensor))
        after = f" ({value.shape} after its transform)" if value.shape != shown else ""
        raise ValueError(
            f"checkpoint tensor {name!r} has shape {shown}{after} but morejax expects "
            f"{expected} at {where}: is this checkpoint for another model?"
        )
    return where


def _report_unknown(names: list[str], unknown: str) -> None:
    more = " ..." if len(names) > 20 else ""
    msg = f"{len(names)} checkpoint tensor(s) not known to the name mapping: {names[:20]}{more}"
    if unknown == "error":
        raise ValueError(msg)
    if unknown == "warn":
        warnings.warn(msg, stacklevel=3)  # at load_params' caller


def _check_filled(targets: dict, filled: dict) -> None:
    """An error naming every leaf (or layer of a stacked leaf) no tensor filled."""
    missing = []
    for path, leaf in targets.items():
        done = filled.get(path)
        if done is True:
            continue
        if isinstance(done, set) and len(done) == leaf.shape[0]:
            continue
        if isinstance(done, set):
            gaps = sorted(set(range(leaf.shape[0])) - done)
            missing.append(f"{path_str(path)} (layers {gaps})")
        else:
            missing.append(path_str(path))
    if missing:
        raise ValueError(
            f"{len(missing)} parameter(s) not found in the checkpoint: " + ", ".join(missing)
        )


# --------------------------------------------------------------------------- saving


def _tensor_pieces(params: Mapping, inverse_rename: InverseRename):
    """(hf_name, getter, shape, dtype) per stored tensor; getters materialise on demand."""
    pieces = []
    for path, leaf in flatten_dict(params).items():
        for hf_name, layer, transform in inverse_rename(path):

            def get(leaf=leaf, layer=layer, transform=transform):
                a = np.asarray(leaf if layer is None else leaf[layer])
                return np.ascontiguousarray(transform(a) if transform is not None else a)

            shape = tuple(leaf.shape) if layer is None else tuple(leaf.shape[1:])
            dt = np.dtype(leaf.dtype)
            if transform is not None:
                # A zero-stride stand-in gives the transformed shape without copying data.
                probe = transform(np.broadcast_to(np.zeros((), dt), shape))
                shape, dt = tuple(probe.shape), np.dtype(probe.dtype)
            if dt not in _TAGS:
                raise ValueError(f"dtype {dt} of {hf_name!r} cannot be stored in safetensors")
            pieces.append((hf_name, get, shape, dt))
    return pieces


def _write_file(path: Path, pieces, metadata: dict | None) -> None:
    """Writes one safetensors file, materialising one tensor at a time.

    Not `safetensors.numpy.save_file`: the library needs every tensor of a file alive at
    once, and kernels are transposed copies. Measured on 384 MiB of (1024, 4096) kernels:
    save_file peaked 384 MiB above the params, this writer 48 MiB (same bytes on disk).
    """
    header: dict = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    for name, _, shape, dt in pieces:
        nbytes = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
        header[name] = {
            "dtype": _TAGS[dt],
            "shape": list(shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the format aligns the data section to 8 bytes
    with open(path, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for name, get, shape, dt in pieces:
            a = get()
            if a.shape != shape or a.dtype != dt:
                raise ValueError(f"{name!r}: transform gave {a.shape} {a.dtype}, not {shape} {dt}")
            f.write(a.tobytes())


def save_safetensors(
    params: Mapping,
    path: str | os.PathLike,
    inverse_rename: InverseRename,
    *,
    max_shard_bytes: int | None = None,
    metadata: dict | None = None,
) -> list[Path]:
    """Writes params in Hugging Face layout; returns the files written.

    ``path`` ending in ``.safetensors`` is one file. Otherwise it is a directory
    that gets ``model.safetensors``, or, when ``max_shard_bytes`` is set and the
    tensors exceed it, ``model-0000i-of-0000n.safetensors`` shards plus
    ``model.safetensors.index.json`` as ``transformers`` writes them.
    """
    pieces = _tensor_pieces(params, inverse_rename)
    names = [p[0] for p in pieces]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"inverse_rename produced duplicate names: {dup}")
    p = Path(path)
    if p.suffix == ".safetensors":
        if max_shard_bytes is not None:
            raise ValueError("max_shard_bytes needs a directory path, not a .safetensors file")
        p.parent.mkdir(parents=True, exist_ok=True)
        _write_file(p, pieces, metadata)
        return [p]
    p.mkdir(parents=True, exist_ok=True)
    shards: list[list] = [[]]
    size = 0
    total = 0
    for piece in pieces:
        _, _, shape, dt = piece
        nbytes = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
        total += nbytes
        if max_shard_bytes is not None and shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(piece)
        size += nbytes
    if len(shards) == 1:
        _write_file(p / SINGLE_NAME, shards[0], metadata)
        return [p / SINGLE_NAME]
    files, weight_map = [], {}
    for i, items in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        _write_file(p / fname, items, metadata)
        files.append(p / fname)
        weight_map.update({piece[0]: fname for piece in items})
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (p / INDEX_NAME).write_text(json.dumps(index, indent=2))
    return files
