"""GLUE through TensorFlow Datasets: random-access splits, examples, label checks.

Data is always read with ``tfds.data_source('glue/<task>', download=False)``
(ArrayRecord, random access, no TensorFlow), prepared first when needed. The task table
is ``glue_tasks``, a local folder's checks and fingerprint ``glue_local``, preparing
(offline from a local folder, or by download) ``glue_prepare``; their public names are
importable from here too.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from morejax import points
from morejax.data.glue_local import layout
from morejax.data.glue_prepare import default_data_dir, is_prepared, prepare, quiet_tfds
from morejax.data.glue_tasks import DEFAULT_MAX_LEN, TASKS, TaskSpec, spec, tfds_modules

__all__ = [
    "DEFAULT_MAX_LEN",
    "TASKS",
    "Examples",
    "TaskSpec",
    "check_labels",
    "default_data_dir",
    "is_prepared",
    "layout",
    "load",
    "prepare",
    "spec",
    "split_overlap",
    "to_example",
]


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
    tfds, _ = tfds_modules()
    with quiet_tfds():
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
            points.write_text(record, json.dumps(counts))
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
