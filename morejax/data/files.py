"""Your own labelled text: CSV, TSV, JSONL and Parquet files, prepared once into Arrow.

A file is read in chunks (pyarrow for CSV, TSV and Parquet, the standard library for
JSONL; the text formats may be gzip-compressed), checked row by row and written as an
Arrow IPC file that is memory-mapped for random access, so a 1 GB file never becomes 1 GB
of Python objects. Prepared data is kept under a cache folder with a fingerprint of its
source (size, SHA-256) and prepared again when the file changes; a failure leaves nothing
behind. Rows count records from 1, a CSV header excluded; every error is one line naming
the file, the row and the column.

Labels are numbers (or text that reads as one) or words, never both in one file. A
prepared file keeps each label's key ('1', 'pos') and, for numbers, its value. What a run
makes of them (classes or scores, and the sorted class list) is decided from the training
file by `decide`; validation and test labels must be classes training saw.

Here: a run's splits and what the training file decides. `files_formats` reads each format in
chunks; `files_prepare` checks the rows and keeps the Arrow copy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from morejax.data.files_formats import file_format, open_text
from morejax.data.files_prepare import MAX_CLASSES, Prepared, columns, prepare, read_table

__all__ = [
    "Prepared",
    "Rows",
    "columns",
    "decide",
    "file_format",
    "held_out",
    "load",
    "open_text",
    "prepare",
    "read_table",
    "split_file",
]

TASK_TYPES = ("classification", "regression")
METRICS = {"classification": ("accuracy", "macro_f1", "mcc"), "regression": ("pearson", "spearman")}
HOLDOUT_SEED = 0  # the held-out slice is the same for every run seed and every resume


def _prepared(data, path) -> Prepared:
    if not data.train:
        raise ValueError("data.kind='text' needs data.train=PATH (a .csv/.tsv/.jsonl/.parquet)")
    if not data.text or not data.label:
        raise ValueError(
            "labelled files need data.text=COLUMN[,COLUMN2] and data.label=COLUMN "
            "(the text and label columns)"
        )
    return prepare(path, columns(data.text), data.label, data.data_dir)


def _sorted_keys(keys, kind: str) -> list[str]:
    return sorted(keys, key=float) if kind == "number" else sorted(keys)


def decide(data) -> dict:
    """What the training file decides for a run (`data.kind='text'`): `task_type`, `classes`
    (None for regression), `metric`, and `summary`, one line saying which was chosen and why.

    Classes unless `data.task_type='regression'` or the labels are numbers not all whole;
    the class list is sorted (numerically for numbers). Validation and test files are
    checked here too, so a bad file stops a run before anything is written.
    """
    train = _prepared(data, data.train)
    label, name = data.label, Path(data.train).name
    if data.task_type not in (None, *TASK_TYPES):
        raise ValueError(f"data.task_type={data.task_type!r}: use one of {', '.join(TASK_TYPES)}")
    regression = data.task_type == "regression" or (
        data.task_type is None and train.kind == "number" and not train.integral
    )
    task_type = TASK_TYPES[regression]
    facts = {
        "word": "words",
        "number": "whole numbers" if train.integral else "numbers, not all whole",
    }[train.kind]
    if regression:
        if train.kind != "number":
            first = train.first
            raise ValueError(
                f"{train.source}, row {first['row']}, column {label!r}: the label "
                f"{first['label']!r} is not a number, which data.task_type=regression needs"
            )
        classes = None
        summary = f"{label!r} of {name} holds {facts}: regression"
    else:
        classes = _classes(data, train)
        shown = ", ".join(classes[:10]) + (", ..." if len(classes) > 10 else "")
        summary = f"{label!r} of {name} holds {facts}: classification, {len(classes)} classes"
        summary += f" ({shown})"
        if train.kind == "number":
            summary += "; data.task_type=regression makes them scores"
    metric = data.metric or ("accuracy" if classes else "pearson")
    allowed = METRICS[task_type]
    if classes and len(classes) != 2:
        allowed = allowed[:2]  # MCC is reported for two classes
    if metric not in allowed:
        raise ValueError(f"data.metric={metric!r} is not reported here; use one of {allowed}")
    for other in (data.validation, data.test):
        if other:
            _check_labels(_prepared(data, other), classes, label)
    return {"task_type": task_type, "classes": classes, "metric": metric, "summary": summary}


def _classes(data, train: Prepared) -> tuple[str, ...]:
    if train.counts is None:
        raise ValueError(
            f"{train.source}, column {data.label!r}: more than {MAX_CLASSES} distinct labels are "
            "too many classes; for scores set data.task_type=regression"
        )
    if data.classes is None:
        classes = tuple(_sorted_keys(train.counts, train.kind))
        if len(classes) < 2:
            raise ValueError(
                f"{train.source}, column {data.label!r}: every label is {classes[0]!r}; "
                "classification needs at least two classes"
            )
        return classes
    _check_labels(train, tuple(data.classes), data.label)
    return tuple(data.classes)


def _check_labels(prepared: Prepared, classes, label: str) -> None:
    """Every label of the file is one of `classes` (a number for regression: None)."""
    if classes is None:
        if prepared.kind != "number":
            first = prepared.first
            raise ValueError(
                f"{prepared.source}, row {first['row']}, column {label!r}: the label "
                f"{first['label']!r} is not a number, and training's labels are scores"
            )
        return
    if prepared.counts is not None and set(prepared.counts) <= set(classes):
        return
    table = read_table(prepared)
    unseen = np.flatnonzero(_class_ids(table, classes) < 0)
    if not unseen.size:
        return
    at = int(unseen[0])
    shown = ", ".join(classes[:10]) + (", ..." if len(classes) > 10 else "")
    raise ValueError(
        f"{prepared.source}, row {table['row'][at].as_py()}, column {label!r}: the label "
        f"{table['key'][at].as_py()!r} never occurs in training (classes: {shown})"
    )


def _class_ids(table: pa.Table, classes) -> np.ndarray:
    """Each record's class id, -1 where its label is not a class."""
    import pyarrow.compute as pc

    ids = pc.index_in(table["key"], value_set=pa.array(list(classes), pa.string()))
    return np.asarray(pc.fill_null(ids, -1).to_numpy(zero_copy_only=False), np.int64)


class Rows:
    """Examples `{'text_a', 'text_b', 'label', 'idx'}` of a prepared file (`idx`: the
    record's position in it), random access over the memory-mapped table."""

    def __init__(self, table: pa.Table, labels: np.ndarray, index: np.ndarray):
        self.table, self.labels, self.index = table, labels, index
        self.pairs = "text_b" in table.column_names

    def __len__(self) -> int:
        return len(self.index)

    def _examples(self, positions: np.ndarray) -> list[dict]:
        a = self.table["text_a"].take(positions).to_pylist()
        b = self.table["text_b"].take(positions).to_pylist() if self.pairs else [None] * len(a)
        return [
            {"text_a": x, "text_b": y, "label": self.labels[p].item(), "idx": int(p)}
            for x, y, p in zip(a, b, positions)
        ]

    def __getitem__(self, i: int) -> dict:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} examples")
        return self._examples(self.index[[i]])[0]

    def __getitems__(self, indices) -> list[dict]:
        return self._examples(self.index[np.asarray(indices, np.int64)])


def split_file(data, split: str) -> tuple[str, np.ndarray | None]:
    """(file, positions in it or None for all) of a split: the validation file, or a slice
    of `data.validation_fraction` of the training file drawn with a fixed seed."""
    if split == "test":
        if not data.test:
            raise ValueError("split 'test' needs a test file: set data.test=PATH")
        return data.test, None
    if split not in ("train", "validation"):
        raise ValueError(f"unknown split {split!r} of your files; use train, validation or test")
    if data.validation:
        return (data.train if split == "train" else data.validation), None
    held = held_out(_prepared(data, data.train).rows, data.validation_fraction, data.train)
    return data.train, np.flatnonzero(held if split == "validation" else ~held)


def held_out(n: int, fraction: float, source) -> np.ndarray:
    """Which of `n` rows the validation slice holds: `fraction` of them, drawn with a fixed
    seed, so every run seed and every resume scores the same rows."""
    if not 0 < fraction < 1:
        raise ValueError(
            f"data.validation_fraction={fraction} must lie in (0, 1) to hold out a validation "
            "slice of the training file (or set data.validation=PATH)"
        )
    k = max(1, round(fraction * n))
    if k >= n:
        raise ValueError(
            f"{source} has {n} row(s): too few to hold out {k} for validation; "
            "set data.validation=PATH"
        )
    held = np.zeros(n, bool)
    held[np.random.default_rng(HOLDOUT_SEED).permutation(n)[:k]] = True
    return held


def load(data, split: str) -> Rows:
    """A split of a resolved run's files (`data.task_type` and `data.classes` decided)."""
    path, positions = split_file(data, split)
    prepared = _prepared(data, path)
    table = read_table(prepared)
    if data.task_type == "regression":
        _check_labels(prepared, None, data.label)
        labels = table["value"].to_numpy(zero_copy_only=False).astype(np.float32)
    else:
        if not data.classes:
            raise ValueError("data.classes is not decided: resolve the config first")
        _check_labels(prepared, tuple(data.classes), data.label)
        labels = _class_ids(table, data.classes).astype(np.int32)
    index = np.arange(prepared.rows) if positions is None else positions
    return Rows(table, labels, index)
