"""GLUE through TensorFlow Datasets, offline first.

Data is always read with ``tfds.data_source('glue/<task>', download=False)``
(ArrayRecord, random access, no TensorFlow). Preparing it has two routes:

* offline: the stock TFDS GLUE builder is run on a local folder in the official
  GLUE zip layout (``SST-2/train.tsv`` ...). Only the download step differs: a
  subclass hands ``Glue._split_generators`` a stand-in download manager that
  returns the local folder. That is the whole patch; parsing, features, split
  names and file layout are TFDS's own, so ``tfds.data_source`` reads the
  result as if TFDS had downloaded it.
* online: TFDS downloads and prepares as usual. Tried only when asked
  (``download=True``) or when a quick connect to the download host succeeds
  and ``MOREJAX_OFFLINE`` is unset, so nothing sits in TFDS's retry loop.

Prepared data lives in ``data_dir`` (``$TFDS_DATA_DIR`` or
``~/tensorflow_datasets``) and is reused: SST-2 takes ~10 s to prepare once.
Data prepared from a local folder carries a fingerprint of its source files
(``morejax_source.json``: name, size, SHA-256 per file), so a later call with a
``local_dir`` holding other files prepares again instead of silently reusing a
different data set (a 20-row slice standing in for the real one).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import functools
import io
import json
import os
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from morejax.data import folders
from morejax.data.metrics import TASK_METRICS, canonical_task

__all__ = [
    "DEFAULT_MAX_LEN",
    "TASKS",
    "Examples",
    "Recipe",
    "TaskSpec",
    "check_labels",
    "default_data_dir",
    "is_prepared",
    "load",
    "prepare",
    "spec",
    "to_example",
]

_STD_FILES = {"train": "train.tsv", "validation": "dev.tsv", "test": "test.tsv"}
_MNLI_FILES = {
    "train": "train.tsv",
    "validation_matched": "dev_matched.tsv",
    "validation_mismatched": "dev_mismatched.tsv",
    "test_matched": "test_matched.tsv",
    "test_mismatched": "test_mismatched.tsv",
}
# TFDS builds MRPC from the original Microsoft files, not GLUE's train/dev.tsv.
_MRPC_TRAIN, _MRPC_TEST = "msr_paraphrase_train.txt", "msr_paraphrase_test.txt"
_MRPC_DEV_IDS = ("mrpc_dev_ids.tsv", "dev_ids.tsv")
_MRPC_FILES = {"train": _MRPC_TRAIN, "validation": _MRPC_TRAIN, "test": _MRPC_TEST}
_MRPC_COLUMNS = ("Quality", "#1 ID", "#2 ID", "#1 String", "#2 String")
_BOM = "\ufeff"


@dataclasses.dataclass(frozen=True)
class Recipe:
    """The MoRe paper's GLUE hyperparameters (docs: methods.md, "MoRe GLUE recipe")."""

    lr: float
    batch_size: int
    epochs: int
    schedule: str  # 'cosine' | 'linear'
    max_length: int = 128
    weight_decay: float = 0.001
    warmup_ratio: float = 0.06


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """What the rest of morejax needs to know about one GLUE task."""

    name: str  # 'sst2'
    tfds_name: str  # 'glue/sst2'
    folder: str  # folder name in the official GLUE zips: 'SST-2'
    text_keys: tuple[str, ...]  # TFDS feature names, first is text_a
    label_names: tuple[str, ...] | None  # None for STS-B (regression)
    num_labels: int  # 1 for regression
    metrics: tuple[str, ...]  # metric names in morejax.metrics
    validation_splits: tuple[str, ...]
    test_splits: tuple[str, ...]
    files: Mapping[str, str]  # split -> file in the local folder
    recipe: Recipe | None  # None where the paper gives none (WNLI)

    @property
    def is_regression(self) -> bool:
        return self.num_labels == 1

    @property
    def splits(self) -> tuple[str, ...]:
        return ("train", *self.validation_splits, *self.test_splits)

    @property
    def default_max_len(self) -> int:
        """Tokens that fit >= 99% of this task's examples (see ``DEFAULT_MAX_LEN``)."""
        return DEFAULT_MAX_LEN[self.name]

    @property
    def main_metric(self) -> str:
        """What ``glue_metrics(...)['score']`` means for this task."""
        return self.metrics[0] if len(self.metrics) == 1 else "mean(" + ",".join(self.metrics) + ")"


def _task(name, folder, text_keys, label_names, recipe, mnli=False, files=_STD_FILES):
    return TaskSpec(
        name=name,
        tfds_name=f"glue/{name}",
        folder=folder,
        text_keys=tuple(text_keys),
        label_names=None if label_names is None else tuple(label_names),
        num_labels=1 if label_names is None else len(label_names),
        metrics=TASK_METRICS[name],
        validation_splits=("validation_matched", "validation_mismatched")
        if mnli
        else ("validation",),
        test_splits=("test_matched", "test_mismatched") if mnli else ("test",),
        files=dict(_MNLI_FILES if mnli else files),
        recipe=recipe,
    )


_PAIR = ("sentence1", "sentence2")
_NLI2 = ("entailment", "not_entailment")
TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in [
        _task("cola", "CoLA", ["sentence"], ["unacceptable", "acceptable"],
              Recipe(2.1e-4, 16, 20, "cosine")),
        _task("sst2", "SST-2", ["sentence"], ["negative", "positive"],
              Recipe(5.4e-4, 16, 10, "cosine")),
        _task("mrpc", "MRPC", _PAIR, ["not_equivalent", "equivalent"],
              Recipe(3.2e-4, 32, 20, "cosine"), files=_MRPC_FILES),
        _task("qqp", "QQP", ["question1", "question2"], ["not_duplicate", "duplicate"],
              Recipe(6.2e-4, 32, 20, "cosine")),
        _task("stsb", "STS-B", _PAIR, None, Recipe(4e-4, 32, 20, "cosine")),
        _task("mnli", "MNLI", ["premise", "hypothesis"], ["entailment", "neutral", "contradiction"],
              Recipe(2e-4, 32, 10, "linear"), mnli=True),
        _task("qnli", "QNLI", ["question", "sentence"], _NLI2, Recipe(3e-4, 32, 10, "cosine")),
        _task("rte", "RTE", _PAIR, _NLI2, Recipe(5.4e-4, 16, 20, "cosine")),
        _task("wnli", "WNLI", _PAIR, ["not_entailment", "entailment"], None),
    ]
}  # fmt: skip


# Token budget per task for a BERT/MiniLM WordPiece tokenizer, specials included, chosen so
# that >= 99% of examples fit. Measured with all-MiniLM-L6's tokenizer on the real data:
# SST-2 p99 44-53 (max 66), CoLA p99 25-29 (max 47), RTE p99 191-197 (max 289; 128 keeps
# only 88%, 256 keeps 99.9%). The others follow published length statistics.
DEFAULT_MAX_LEN: dict[str, int] = {
    "cola": 64,
    "sst2": 64,
    "mrpc": 128,
    "qqp": 128,
    "stsb": 128,
    "mnli": 128,
    "qnli": 256,
    "rte": 256,
    "wnli": 128,
}


def spec(task: str) -> TaskSpec:
    """Look a task up by any common spelling ('SST-2', 'sst2', 'STS-B')."""
    return TASKS[canonical_task(task)]


def default_data_dir() -> Path:
    return Path(os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets").expanduser()


def _say(msg: str) -> None:
    print(f"morejax.data.glue: {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _quiet_tfds() -> Iterator[None]:
    """TFDS's own preparation chatter (stdout banners, absl warnings about folders it is about
    to create, progress bars) hidden, unless MOREJAX_DEBUG (`--debug`) asks for it: our
    `_say` lines say what is prepared, from where, and how long it took."""
    if os.environ.get("MOREJAX_DEBUG", "").strip() not in ("", "0"):
        yield
        return
    from absl import logging as absl_logging

    tfds, _ = _tfds()
    tfds.display_progress_bar(False)
    verbosity = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        absl_logging.set_verbosity(verbosity)


# --------------------------------------------------------------------------- TFDS access


@functools.cache
def _tfds():
    try:
        import tensorflow_datasets as tfds
        from tensorflow_datasets.text import glue as tfds_glue
    except ImportError as e:  # h5py / importlib_resources gaps show up here
        raise ImportError(
            f"GLUE needs tensorflow-datasets with h5py and importlib_resources installed ({e})"
        ) from e
    return tfds, tfds_glue


@functools.cache
def _local_builder_cls():
    tfds, tfds_glue = _tfds()

    class LocalGlue(tfds_glue.Glue, skip_registration=True):
        """TFDS's GLUE builder with its download step served from a local folder."""

        name = "glue"  # same dataset name, folders and file names as the stock builder

        def __init__(self, *, local_downloads, **kwargs):
            self._local_downloads = local_downloads
            super().__init__(**kwargs)

        def _split_generators(self, dl_manager):
            return super()._split_generators(self._local_downloads)

    return LocalGlue


class _LocalDownloads:
    """Stands in for the DownloadManager inside ``Glue._split_generators`` only.

    The GLUE builder calls ``download_and_extract(zip_url)`` and joins the
    config's folder name ('SST-2') to the result; MRPC calls ``download`` with
    a dict of three files. Anything else is a TFDS change this must learn about.
    """

    def __init__(self, extracted_root: str, mrpc_files: dict[str, str] | None = None):
        self._root = extracted_root
        self._mrpc_files = mrpc_files

    def download_and_extract(self, url):
        return self._root

    def download(self, urls):
        if self._mrpc_files is None or not isinstance(urls, Mapping):
            raise NotImplementedError(f"local GLUE preparation cannot download {urls!r}")
        return {k: self._mrpc_files[k] for k in urls}

    def __getattr__(self, name):  # only reached for attributes not defined above
        raise AttributeError(f"local GLUE preparation does not provide dl_manager.{name}")


def _builder(s: TaskSpec, data_dir: Path, **kwargs):
    tfds, _ = _tfds()
    return tfds.builder(s.tfds_name, data_dir=os.fspath(data_dir), **kwargs)


def is_prepared(task: str, *, data_dir=None) -> bool:
    s = spec(task)
    data_dir = Path(data_dir).expanduser() if data_dir else default_data_dir()
    return _builder(s, data_dir).is_prepared()


# --------------------------------------------------------------------------- local folders


def _config(s: TaskSpec):
    _, tfds_glue = _tfds()
    return next(c for c in tfds_glue.Glue.BUILDER_CONFIGS if c.name == s.name)


def layout(task: str) -> str:
    """The local folder layout a task needs, for error messages and docs."""
    s = spec(task)
    if s.name == "mrpc":
        return (
            f"{s.folder}/{_MRPC_TRAIN} (UTF-8 BOM, header {', '.join(_MRPC_COLUMNS)}), "
            f"{s.folder}/{_MRPC_TEST} (same columns), "
            f"{s.folder}/{_MRPC_DEV_IDS[0]} or {_MRPC_DEV_IDS[1]} (two ID columns, no header)"
        )
    cfg = _config(s)
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


def _task_dir(s: TaskSpec, local_dir) -> Path:
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
    cfg = _config(s)
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
    files = {"train": task_dir / _MRPC_TRAIN, "test": task_dir / _MRPC_TEST, "dev_ids": dev_ids}
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


def _validate_local(s: TaskSpec, task_dir: Path) -> tuple[dict[str, int], dict[str, str] | None]:
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


@contextlib.contextmanager
def _extracted_root(s: TaskSpec, task_dir: Path) -> Iterator[str]:
    """A folder F with F/<official folder name> == task_dir, as the builder expects."""
    if task_dir.name == s.folder:
        yield os.fspath(task_dir.parent)
        return
    with tempfile.TemporaryDirectory(prefix="morejax-glue-") as tmp:
        os.symlink(task_dir.resolve(), Path(tmp) / s.folder, target_is_directory=True)
        yield tmp


# --------------------------------------------------------------------------- source fingerprint

_SOURCE_RECORD = "morejax_source.json"  # beside dataset_info.json in the prepared folder


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


def _fingerprint(s: TaskSpec, task_dir: Path) -> dict[str, dict[str, Any]]:
    """Name, size and content hash per source file; the folder's own path is left out,
    so moving or copying the same files does not prepare again."""
    return {
        name: {"size": path.stat().st_size, "sha256": folders.sha256(path)}
        for name, path in sorted(_source_files(s, task_dir).items())
    }


def _recorded_fingerprint(data_path: Path) -> dict | None:
    try:
        files = json.loads((data_path / _SOURCE_RECORD).read_text(encoding="utf-8"))["files"]
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


def _prepare_local(s: TaskSpec, data_dir: Path, task_dir: Path, final: Path) -> Path:
    """Validate, prepare into a temporary sibling of ``final``, record the source
    fingerprint there and only then swap it in, so a failure keeps the old data."""
    counts, mrpc = _validate_local(s, task_dir)
    fingerprint = _fingerprint(s, task_dir)
    sizes = " / ".join(f"{k} {v:,}" for k, v in counts.items())
    _say(f"preparing {s.tfds_name} from {task_dir} into {data_dir} (ArrayRecord): {sizes}")
    t0 = time.perf_counter()
    tfds, _ = _tfds()
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".morejax-preparing-", dir=final.parent) as tmp:
        with _extracted_root(s, task_dir) as root:
            local = _local_builder_cls()(
                local_downloads=_LocalDownloads(root, mrpc),
                config=s.name,
                data_dir=tmp,
                file_format="array_record",
            )
            local.download_and_prepare(
                download_config=tfds.download.DownloadConfig(try_download_gcs=False)
            )
        got = {k: v.num_examples for k, v in local.info.splits.items()}
        if got != counts:
            _say(f"warning: expected split sizes {counts}, TFDS wrote {got}")
        built = Path(os.fspath(local.data_path))
        record = {"task": s.name, "source": os.fspath(task_dir.resolve()), "files": fingerprint}
        (built / _SOURCE_RECORD).write_text(json.dumps(record, indent=1), encoding="utf-8")
        if final.exists():
            trash = Path(tmp) / "replaced"  # removed with tmp once the new data is in place
            os.replace(final, trash)
            try:
                os.replace(built, final)
            except BaseException:
                os.replace(trash, final)
                raise
        else:
            try:
                os.replace(built, final)
            except OSError:
                if _recorded_fingerprint(final) != fingerprint:
                    raise
                # Another process prepared the same files meanwhile: theirs stays.
    _say(f"prepared {s.tfds_name} in {time.perf_counter() - t0:.1f} s")
    return final


def _stale_reason(s: TaskSpec, data_path: Path, task_dir: Path) -> str | None:
    """Why data prepared in ``data_path`` is not the data in ``task_dir``, or None."""
    old = _recorded_fingerprint(data_path)
    new = _fingerprint(s, task_dir)
    if old is None:
        return (
            "it has no record of its source files (downloaded by TFDS or prepared by an "
            "older morejax)"
        )
    if old != new:
        return f"its source files differ from {task_dir}: {_what_changed(old, new)}"
    return None


# --------------------------------------------------------------------------- network


def _offline_reason(s: TaskSpec, timeout: float = 1.5) -> str | None:
    """Why downloading cannot work now, or None; bounded so it never hangs."""
    if os.environ.get("MOREJAX_OFFLINE", "").strip() not in ("", "0"):
        return "MOREJAX_OFFLINE is set"
    url = _config(s).data_url or "https://dl.fbaipublicfiles.com/"
    host = url.split("://", 1)[-1].split("/", 1)[0]
    result: list[str | None] = []

    def probe():
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            result.append(None)
        except OSError as e:
            result.append(f"cannot reach {host}: {e}")

    t = threading.Thread(target=probe, daemon=True)  # DNS lookups ignore socket timeouts
    t.start()
    t.join(timeout + 0.5)
    return result[0] if result else f"no answer from {host} within {timeout + 0.5:.1f} s"


# --------------------------------------------------------------------------- public API


def prepare(task: str, *, data_dir=None, local_dir=None, download: bool | None = None) -> Path:
    """Make ``tfds.data_source('glue/<task>')`` readable from ``data_dir``.

    Prepares from ``local_dir`` (the task's folder in the official GLUE layout,
    or a GLUE root holding it; default ``$MOREJAX_GLUE_DIR``), else downloads
    through TFDS if ``download`` is True, or None and the network answers.
    Fails fast with the expected layout when neither is possible. Prepared data
    is reused, unless a ``local_dir`` is given whose files differ from those it
    was prepared from (or it records none): then it is prepared again and
    replaced. Returns the prepared dataset's folder.
    """
    with _quiet_tfds():
        return _prepare(task, data_dir=data_dir, local_dir=local_dir, download=download)


def _prepare(task: str, *, data_dir, local_dir, download: bool | None) -> Path:
    s = spec(task)
    data_dir = Path(data_dir).expanduser() if data_dir else default_data_dir()
    tfds, _ = _tfds()
    builder = _builder(s, data_dir)
    data_path = Path(os.fspath(builder.data_path))
    local_dir = local_dir or os.environ.get("MOREJAX_GLUE_DIR") or None
    if builder.is_prepared():
        fmt = builder.info.file_format
        if fmt is not None and getattr(fmt, "value", fmt) != "array_record":
            raise ValueError(
                f"{s.tfds_name} in {data_dir} was prepared as {fmt}, but random access needs "
                "ArrayRecord; prepare it into another data_dir or delete "
                f"{builder.data_path}"
            )
        if local_dir is None:
            return data_path
        if not Path(local_dir).expanduser().is_dir():
            raise FileNotFoundError(f"{s.tfds_name}: local folder {local_dir} does not exist")
        try:
            task_dir = _task_dir(s, local_dir)
            why = _stale_reason(s, data_path, task_dir)
        except FileNotFoundError:  # e.g. a GLUE root without this task: keep what is there
            _say(f"using {s.tfds_name} prepared in {data_dir}: {local_dir} does not hold its files")
            return data_path
        if why is None:
            return data_path
        _say(f"{s.tfds_name} in {data_dir} is prepared again: {why}")
        return _prepare_local(s, data_dir, task_dir, data_path)

    if local_dir is not None:
        return _prepare_local(s, data_dir, _task_dir(s, local_dir), data_path)
    dl_config = tfds.download.DownloadConfig(try_download_gcs=False)

    reason = None if download else _offline_reason(s)
    if download is False or reason is not None:
        why = "download=False" if download is False else reason
        url = _config(s).data_url
        source = (
            f"The GLUE zip {url} unpacks to that layout."
            if url
            else "These are the Microsoft Research Paraphrase Corpus files plus GLUE's dev ids."
        )
        raise FileNotFoundError(
            f"{s.tfds_name} is not prepared in {data_dir} and will not be downloaded ({why}).\n"
            f"Pass local_dir= (or set MOREJAX_GLUE_DIR) to a folder in the official GLUE layout:\n"
            f"  {layout(s.name)}\n{source} Or, with network access, pass download=True."
        )
    _say(f"downloading and preparing {s.tfds_name} into {data_dir} with TFDS")
    builder = _builder(s, data_dir, file_format="array_record")
    builder.download_and_prepare(download_config=dl_config)
    return Path(os.fspath(builder.data_path))


def _check_split(s: TaskSpec, split: str) -> None:
    base = str(split).split("[", 1)[0]  # TFDS slices such as 'train[:10%]' are fine
    if base not in s.splits:
        raise ValueError(f"{s.tfds_name} has no split {split!r}; splits: {', '.join(s.splits)}")


def load(
    task: str,
    split: str,
    *,
    data_dir=None,
    local_dir=None,
    download: bool | None = None,
    normalize: bool = False,
):
    """Random-access GLUE split (len + getitem), preparing it first if needed.

    Records are TFDS's dicts (bytes text, int label, -1 on test splits);
    ``normalize=True`` returns :func:`to_example` dicts instead.
    """
    s = spec(task)
    _check_split(s, split)
    data_dir = Path(data_dir).expanduser() if data_dir else default_data_dir()
    prepare(s.name, data_dir=data_dir, local_dir=local_dir, download=download)
    tfds, _ = _tfds()
    with _quiet_tfds():
        source = tfds.data_source(
            s.tfds_name, split=split, data_dir=os.fspath(data_dir), download=False
        )
    if len(source) == 0:
        raise ValueError(f"{s.tfds_name} split {split!r} in {data_dir} is empty")
    return Examples(source, s.name) if normalize else source


_OVERLAP_RECORD = "morejax_overlap.json"


def split_overlap(task: str, split: str, *, data_dir=None, local_dir=None) -> tuple[int, int]:
    """(examples of `split` whose text also occurs in train, examples of `split`), for
    information: GLUE itself repeats a few sentences. Counted once per prepared copy (kept
    beside it, so re-preparing counts again)."""
    from morejax.data.overlap import count_text_overlap

    s = spec(task)
    data_dir = Path(data_dir).expanduser() if data_dir else default_data_dir()
    record = prepare(s.name, data_dir=data_dir, local_dir=local_dir) / _OVERLAP_RECORD
    try:
        counts = json.loads(record.read_text())
    except (OSError, ValueError):
        counts = {}
    if split not in counts:

        def texts(which):
            examples = load(s.name, which, data_dir=data_dir, normalize=True)
            rows = examples.__getitems__(range(len(examples)))
            return [r["text_a"] + "\n" + (r["text_b"] or "") for r in rows]

        counts[split] = count_text_overlap(texts("train"), texts(split))
        try:
            tmp = record.with_suffix(".tmp")
            tmp.write_text(json.dumps(counts))
            os.replace(tmp, record)
        except OSError:  # a read-only copy: count again next time
            pass
    seen, total = counts[split]
    return int(seen), int(total)


def _text(value) -> str:
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        value = value.item()  # numpy scalars from mocked/converted records
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def to_example(task: str, record: Mapping[str, Any]) -> dict[str, Any]:
    """One record as ``{'text_a', 'text_b', 'label', 'idx'}``, task-independent.

    ``text_b`` is None for single-sentence tasks; ``label`` is an int class id,
    a float for STS-B, and -1 on test splits.
    """
    s = spec(task)
    missing = [k for k in (*s.text_keys, "label", "idx") if k not in record]
    if missing:
        raise KeyError(f"{s.tfds_name} record lacks {missing}; it has {sorted(record)}")
    label = record["label"]
    return {
        "text_a": _text(record[s.text_keys[0]]),
        "text_b": _text(record[s.text_keys[1]]) if len(s.text_keys) > 1 else None,
        "label": float(label) if s.is_regression else int(label),
        "idx": int(record["idx"]),
    }


class Examples(Sequence):
    """A data source whose items are :func:`to_example` dicts (grain-compatible)."""

    def __init__(self, source, task: str):
        self.source = source
        self.task = spec(task).name

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index):
        n = len(self)
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(n))]
        i = int(index) + n if int(index) < 0 else int(index)
        if not 0 <= i < n:  # ArrayRecord raises ValueError; Sequence needs IndexError
            raise IndexError(f"index {index} out of range for {n} examples")
        return to_example(self.task, self.source[i])

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def __getitems__(self, indices):
        from morejax.data.batching import read_many

        return [to_example(self.task, r) for r in read_many(self.source, indices)]

    def __repr__(self) -> str:
        return f"Examples({self.task}, n={len(self)})"


# --------------------------------------------------------------------------- label checks


def _raw_labels(source) -> np.ndarray:
    """Labels of a TFDS ArrayRecord source, parsed from the serialized records alone:
    ~0.6 s for SST-2's 67k training rows, against ~3.5 s to decode whole records."""
    from tensorflow_datasets.proto import tf_example_pb2

    raw, n, out = source.data_source, len(source), []
    for start in range(0, n, 8192):
        for blob in raw.__getitems__(range(start, min(n, start + 8192))):
            feature = tf_example_pb2.Example.FromString(blob).features.feature["label"]
            kind = feature.WhichOneof("kind")
            if kind not in ("int64_list", "float_list"):
                raise TypeError(f"label feature holds {kind}")
            out.extend(getattr(feature, kind).value)
    if len(out) != n:
        raise ValueError(f"{len(out)} labels for {n} records")
    return np.asarray(out)


def _labels(source) -> np.ndarray:
    if isinstance(source, Examples):
        source = source.source  # same labels, without decoding the texts
    if hasattr(source, "data_source") and hasattr(source, "dataset_info"):
        try:
            return _raw_labels(source)
        except Exception:  # noqa: BLE001 - a TFDS layout change: read the slow way below
            pass
    from morejax.data.batching import read_all

    return np.asarray([r["label"] for r in read_all(source)], dtype=np.float64)


def _shown(values: np.ndarray) -> str:
    found = sorted({int(v) if float(v).is_integer() else float(v) for v in values[:1000]})
    return ", ".join(map(str, found[:8])) + (", ..." if len(found) > 8 else "")


def check_labels(task: str, source, num_labels: int | None, split: str) -> None:
    """Raise ValueError unless every label of ``source`` suits a ``num_labels`` head.

    A class id outside [0, num_labels) (GLUE's test splits are all -1) becomes a
    NaN loss or a silently wrong metric in training; this makes it an error when
    the data is loaded instead. ``source`` is what :func:`load` returns (either
    form) or any sequence of records with a ``label``. Call it for the splits
    whose labels are used (training and evaluation), before wrapping them.
    """
    s = spec(task)
    advice = "leave model.num_labels unset: the task decides it"
    labels = _labels(source)
    if num_labels is not None and num_labels != s.num_labels:
        if s.is_regression:
            raise ValueError(
                f"{s.tfds_name} split {split!r} is a regression task with one score per "
                f"example in [0, 5], so num_labels must be 1, not {num_labels}; {advice}"
            )
        over = labels[labels >= num_labels]
        seen = f"; {split!r} has labels {_shown(over)} outside [0, {num_labels})" * bool(over.size)
        raise ValueError(
            f"{s.tfds_name} split {split!r}: the task has {s.num_labels} classes "
            f"({', '.join(s.label_names)}: labels in [0, {s.num_labels})), "
            f"but num_labels={num_labels}{seen}; {advice}"
        )
    if s.is_regression:
        bad = ~np.isfinite(labels) | (labels < 0) | (labels > 5)
        allowed = "scores in [0, 5]"
    else:
        bad = (labels < 0) | (labels >= s.num_labels) | (labels != np.floor(labels))
        allowed = f"class ids in [0, {s.num_labels})"
    if not bad.any():
        return
    hint = (
        "GLUE's test labels are hidden (-1): train and evaluate on 'train' and "
        + ", ".join(repr(v) for v in s.validation_splits)
        if np.all(labels[bad] == -1)
        else "fix the files it was prepared from and pass them as local_dir= to prepare again"
    )
    raise ValueError(
        f"{s.tfds_name} split {split!r}: {int(bad.sum()):,} of {len(labels):,} labels are not "
        f"{allowed} (found {_shown(labels[bad])}); {hint}"
    )
