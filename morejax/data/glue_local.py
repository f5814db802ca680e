"""A GLUE task's local folder in the official layout: what it must hold, the checks run
before TFDS sees it (columns, labels, row counts, each error naming its file and line),
and the fingerprint of its files (name, size, SHA-256) that prepared data records."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from morejax.data import folders
from morejax.data.glue_tasks import MRPC_TEST, MRPC_TRAIN, TaskSpec, spec, tfds_config

__all__ = [
    "SOURCE_RECORD",
    "check_folder",
    "find_task_dir",
    "layout",
    "recorded_fingerprint",
    "source_fingerprint",
    "stale_reason",
]

_MRPC_DEV_IDS = ("mrpc_dev_ids.tsv", "dev_ids.tsv")
_MRPC_COLUMNS = ("Quality", "#1 ID", "#2 ID", "#1 String", "#2 String")
_BOM = "\ufeff"
SOURCE_RECORD = "morejax_source.json"  # beside dataset_info.json in the prepared folder


def layout(task: str) -> str:
    """The local folder layout a task needs, for error messages and docs."""
    s = spec(task)
    if s.name == "mrpc":
        return (
            f"{s.folder}/{MRPC_TRAIN} (UTF-8 BOM, header {', '.join(_MRPC_COLUMNS)}), "
            f"{s.folder}/{MRPC_TEST} (same columns), "
            f"{s.folder}/{_MRPC_DEV_IDS[0]} or {_MRPC_DEV_IDS[1]} (two ID columns, no header)"
        )
    cfg = tfds_config(s)
    cols = ", ".join(cfg.text_features.values())
    parts = []
    for split, fname in s.files.items():
        if s.name == "cola" and split != "test":
            parts.append(f"{s.folder}/{fname} (no header; source, label 0/1, -, sentence)")
        elif split.startswith("test"):
            parts.append(f"{s.folder}/{fname} (header with {cols})")
        else:
            parts.append(f"{s.folder}/{fname} (header with {cols}, {cfg.label_column})")
    return "; ".join(parts)


def find_task_dir(s: TaskSpec, local_dir) -> Path:
    """Accept either the task folder itself or a GLUE root holding it."""
    root = Path(local_dir).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{s.tfds_name}: local folder {root} does not exist")
    return root / s.folder if (root / s.folder).is_dir() else root


def _open(path: Path):
    return open(path, encoding="utf-8", newline="")


def _check_label(s: TaskSpec, value: str, path: Path, line: int) -> None:
    if s.is_regression:
        try:
            float(value)
            return
        except ValueError:
            pass
    elif value in s.label_names:
        return
    elif value.lstrip("-").isdigit() and 0 <= int(value) < s.num_labels:
        return
    want = (
        "a number" if s.is_regression else f"one of {list(s.label_names)} or 0..{s.num_labels - 1}"
    )
    raise ValueError(f"{path}, line {line}: label {value!r} is not {want}")


def _count_tsv(s: TaskSpec, path: Path, split: str) -> int:
    """Validate one GLUE TSV and count the rows the TFDS builder will keep."""
    cfg = tfds_config(s)
    labelled = not split.startswith("test")
    n = 0
    with _open(path) as f:
        if s.name == "cola" and labelled:  # CoLA train/dev: no header
            for line, row in enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE), 1):
                if len(row) < 4:
                    raise ValueError(
                        f"{path}, line {line}: CoLA {split} rows need 4 tab-separated columns "
                        f"(source, label, original label, sentence), found {len(row)}"
                    )
                _check_label(s, row[1], path, line)
                n += 1
            return n
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = [h.lstrip(_BOM) for h in reader.fieldnames or []]
        need = list(cfg.text_features.values()) + ([cfg.label_column] if labelled else [])
        missing = [c for c in need if c not in header]
        if missing:
            raise ValueError(
                f"{path}: missing column(s) {missing}; header is {header}; "
                f"{s.name} {split} needs {need}"
            )
        for line, row in enumerate(reader, 2):
            if any(row.get(c) is None for c in cfg.text_features.values()):
                continue  # short row: the builder drops it too
            if cfg.label_column in row:
                value = row[cfg.label_column]
                if value is None or value == "":
                    continue  # unlabelled row: dropped by the builder
                _check_label(s, value, path, line)
            n += 1
    return n


def _mrpc_files(s: TaskSpec, task_dir: Path) -> dict[str, Path]:
    dev_ids = next((task_dir / n for n in _MRPC_DEV_IDS if (task_dir / n).is_file()), None)
    files = {"train": task_dir / MRPC_TRAIN, "test": task_dir / MRPC_TEST, "dev_ids": dev_ids}
    for key, path in files.items():
        if path is None or not path.is_file():
            name = " or ".join(_MRPC_DEV_IDS) if key == "dev_ids" else path.name
            raise FileNotFoundError(
                f"{s.tfds_name}: {task_dir / name} not found; expected layout: {layout(s.name)}"
            )
    return files


def _count_mrpc(s: TaskSpec, files: dict[str, Path]) -> dict[str, int]:
    with _open(files["dev_ids"]) as f:
        dev_ids = {tuple(r[:2]) for r in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)}
    counts = {"train": 0, "validation": 0, "test": 0}
    for key in ("train", "test"):
        path = files[key]
        with _open(path) as f:
            if f.read(1) != _BOM:
                if key == "train":  # the builder skips the first 3 bytes blindly
                    raise ValueError(
                        f"{path}: must start with the UTF-8 byte-order mark, like Microsoft's "
                        "original file (TFDS's MRPC reader skips its first 3 bytes)"
                    )
                f.seek(0)
            reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            header = list(reader.fieldnames or [])
            need = _MRPC_COLUMNS if key == "train" else _MRPC_COLUMNS[3:]
            missing = [c for c in need if c not in header]
            if missing:
                raise ValueError(f"{path}: missing column(s) {missing}; header is {header}")
            for line, row in enumerate(reader, 2):
                if key == "test":
                    counts["test"] += 1
                    continue
                _check_label(s, row["Quality"] or "", path, line)
                dev = (row["#1 ID"], row["#2 ID"]) in dev_ids
                counts["validation" if dev else "train"] += 1
    return counts


def check_folder(s: TaskSpec, task_dir: Path) -> tuple[dict[str, int], dict[str, str] | None]:
    """Check a local folder before TFDS sees it; return expected split sizes."""
    mrpc = None
    if s.name == "mrpc":
        mrpc = _mrpc_files(s, task_dir)
        counts = _count_mrpc(s, mrpc)
        mrpc = {k: os.fspath(v) for k, v in mrpc.items()}
    else:
        for fname in dict.fromkeys(s.files.values()):
            if not (task_dir / fname).is_file():
                raise FileNotFoundError(
                    f"{s.tfds_name}: {task_dir / fname} not found; "
                    f"expected layout: {layout(s.name)}"
                )
        counts = {split: _count_tsv(s, task_dir / s.files[split], split) for split in s.splits}
    for split, n in counts.items():
        if n == 0:
            raise ValueError(
                f"{s.tfds_name}: split {split!r} from {task_dir / s.files[split]} has no examples"
            )
    return counts, mrpc


def _source_files(s: TaskSpec, task_dir: Path) -> dict[str, Path]:
    """The files the builder reads, by name; FileNotFoundError when one is missing."""
    if s.name == "mrpc":
        return {p.name: p for p in _mrpc_files(s, task_dir).values()}
    files = {fname: task_dir / fname for fname in dict.fromkeys(s.files.values())}
    for path in files.values():
        if not path.is_file():
            raise FileNotFoundError(
                f"{s.tfds_name}: {path} not found; expected layout: {layout(s.name)}"
            )
    return files


def source_fingerprint(s: TaskSpec, task_dir: Path) -> dict[str, dict[str, Any]]:
    """Name, size and content hash per source file; the folder's own path is left out,
    so moving or copying the same files does not prepare again."""
    return {
        name: {"size": path.stat().st_size, "sha256": folders.sha256(path)}
        for name, path in sorted(_source_files(s, task_dir).items())
    }


def recorded_fingerprint(data_path: Path) -> dict | None:
    """The fingerprint recorded beside prepared data; None when absent or unreadable."""
    try:
        files = json.loads((data_path / SOURCE_RECORD).read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    ok = isinstance(files, dict) and all(isinstance(v, dict) for v in files.values())
    return files if ok else None


def _what_changed(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    parts = []
    for name in sorted({*old, *new}):
        if name not in old:
            parts.append(f"{name} is new")
        elif name not in new:
            parts.append(f"{name} is gone")
        elif old[name].get("size") != new[name]["size"]:
            parts.append(f"{name} changed ({old[name].get('size')} -> {new[name]['size']} bytes)")
        elif old[name].get("sha256") != new[name]["sha256"]:
            parts.append(f"{name} changed (same size, other content)")
    return ", ".join(parts) or "the source record differs"


def stale_reason(s: TaskSpec, data_path: Path, task_dir: Path) -> str | None:
    """Why data prepared in ``data_path`` is not the data in ``task_dir``, or None."""
    old = recorded_fingerprint(data_path)
    new = source_fingerprint(s, task_dir)
    if old is None:
        return (
            "it has no record of its source files (downloaded by TFDS or prepared by an "
            "older morejax)"
        )
    if old != new:
        return f"its source files differ from {task_dir}: {_what_changed(old, new)}"
    return None
