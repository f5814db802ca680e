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
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import hashlib
import json
import math
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from morejax.data import folders

__all__ = [
    "Prepared",
    "Rows",
    "columns",
    "decide",
    "held_out",
    "load",
    "open_text",
    "prepare",
    "split_file",
]

FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".parquet": "parquet"}
TASK_TYPES = ("classification", "regression")
METRICS = {"classification": ("accuracy", "macro_f1", "mcc"), "regression": ("pearson", "spearman")}
MAX_CLASSES = 1000  # past this many distinct labels a file's keys are not counted
HOLDOUT_SEED = 0  # the held-out slice is the same for every run seed and every resume
CHUNK_ROWS = 65536
VERSION = 1  # of the prepared layout: a new one prepares every file again
_RECORD, _TABLE = "source.json", "data.arrow"


def _say(msg: str) -> None:
    print(f"morejax.data.files: {msg}", file=sys.stderr, flush=True)


def file_format(path: str | os.PathLike) -> str:
    """'csv', 'tsv', 'jsonl' or 'parquet' from the name (the first three also as .gz)."""
    name = Path(path).name.lower()
    name = name[:-3] if name.endswith(".gz") and not name.endswith(".parquet.gz") else name
    for suffix, fmt in FORMATS.items():
        if name.endswith(suffix):
            return fmt
    raise ValueError(
        f"{path}: unknown file type; use .csv, .tsv, .jsonl (each optionally .gz) or .parquet"
    )


def columns(spec: str | Sequence[str]) -> tuple[str, ...]:
    """`data.text` as column names: 'sentence' or 'sentence1,sentence2'."""
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    names = tuple(n.strip() for n in names)
    if not 1 <= len(names) <= 2 or not all(names):
        raise ValueError(f"data.text={spec!r}: name one text column, or two for sentence pairs")
    return names


# ----------------------------------------------------------------------------- reading


def open_text(path: Path):
    """A text file, gunzipped when its name ends in .gz; a UTF-8 byte-order mark is skipped."""
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def _require(path: Path, need: Sequence[str], header: Sequence[str], row: int | None = None):
    missing = [c for c in need if c not in header]
    if missing:
        where = f"{path}, row {row}" if row is not None else str(path)
        has = "the row has" if row is not None else "the header is"
        raise ValueError(
            f"{where}: no column {missing[0]!r} ({has}: {', '.join(map(str, header)) or 'none'})"
        )


def _csv_chunks(path: Path, need: Sequence[str], fmt: str) -> Iterator[tuple[range, dict]]:
    import pyarrow.csv as pacsv

    delimiter = "\t" if fmt == "tsv" else ","
    quoting = csv.QUOTE_NONE if fmt == "tsv" else csv.QUOTE_MINIMAL
    try:
        with open_text(path) as f:
            header = next(csv.reader(f, delimiter=delimiter, quoting=quoting), None)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ValueError(f"{path}: does not parse as {fmt.upper()} ({e})") from None
    if not header:
        raise ValueError(f"{path}: the file is empty")
    _require(path, need, header)
    bad = []

    def invalid(row):
        bad.append(row)
        return "error"

    try:
        reader = pacsv.open_csv(
            path,
            read_options=pacsv.ReadOptions(use_threads=False, block_size=1 << 22),
            parse_options=pacsv.ParseOptions(
                delimiter=delimiter, quote_char=fmt != "tsv" and '"', invalid_row_handler=invalid
            ),
            convert_options=pacsv.ConvertOptions(
                include_columns=list(need), column_types=dict.fromkeys(need, pa.string())
            ),
        )
        start = 1
        for batch in reader:
            yield range(start, start + batch.num_rows), {c: batch[c].to_pylist() for c in need}
            start += batch.num_rows
    except (pa.ArrowInvalid, OSError) as e:
        if bad:
            row = bad[0]
            raise ValueError(
                f"{path}, row {row.number - 1}: does not parse as {fmt.upper()} (expected "
                f"{row.expected_columns} columns, found {row.actual_columns})"
            ) from None
        reason = str(e).strip().splitlines()[0]
        raise ValueError(f"{path}: does not parse as {fmt.upper()} ({reason})") from None


def _jsonl_chunks(path: Path, need: Sequence[str]) -> Iterator[tuple[list, dict]]:
    rows, chunk = [], {c: [] for c in need}
    row = 0
    try:
        with open_text(path) as f:
            for row, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(
                        f"{path}, row {row}: does not parse as JSON ({e.msg}, at character "
                        f"{e.colno})"
                    ) from None
                if not isinstance(record, dict):
                    raise ValueError(
                        f"{path}, row {row}: a JSON object per line is expected, not "
                        f"{type(record).__name__}"
                    )
                _require(path, need, list(record), row)
                rows.append(row)
                for c in need:
                    chunk[c].append(record[c])
                if len(rows) == CHUNK_ROWS:
                    yield rows, chunk
                    rows, chunk = [], {c: [] for c in need}
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}, row {row + 1}: does not parse as JSONL ({e})") from None
    if row == 0:
        raise ValueError(f"{path}: the file is empty")
    if rows:
        yield rows, chunk


def _parquet_chunks(path: Path, need: Sequence[str]) -> Iterator[tuple[range, dict]]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise ValueError(f"{path}: does not parse as Parquet ({e})") from None
    _require(path, need, parquet.schema_arrow.names)
    start = 1
    for batch in parquet.iter_batches(batch_size=CHUNK_ROWS, columns=list(need)):
        yield range(start, start + batch.num_rows), {c: batch[c].to_pylist() for c in need}
        start += batch.num_rows


def _chunks(path: Path, need: Sequence[str]):
    fmt = file_format(path)
    if fmt == "jsonl":
        return _jsonl_chunks(path, need)
    if fmt == "parquet":
        return _parquet_chunks(path, need)
    return _csv_chunks(path, need, fmt)


# ----------------------------------------------------------------------------- checking rows


def _text(value, path: Path, row: int, column: str) -> str:
    if not isinstance(value, str):
        raise ValueError(
            f"{path}, row {row}, column {column!r}: the text is not a string ({value!r})"
        )
    if not value.strip():
        raise ValueError(f"{path}, row {row}, column {column!r}: the text is empty")
    return value


def _label(value, path: Path, row: int, column: str) -> tuple[str, str, float | None]:
    """(kind 'number' or 'word', key, numeric value) of one label."""
    where = f"{path}, row {row}, column {column!r}"
    if isinstance(value, bool):
        return "word", str(value).lower(), None
    if isinstance(value, (int, float)):
        number = value
    elif isinstance(value, str):
        word = value.strip()
        if not word:
            raise ValueError(f"{where}: the label is empty")
        try:
            number = int(word)
        except ValueError:
            try:
                number = float(word)
            except ValueError:
                return "word", word, None
    elif value is None:
        raise ValueError(f"{where}: the label is empty")
    else:
        raise ValueError(f"{where}: the label is not a word or a number ({value!r})")
    if not math.isfinite(number):
        raise ValueError(f"{where}: the label {value!r} is not a finite number")
    whole = isinstance(number, int) or number.is_integer()
    return "number", str(int(number)) if whole else repr(float(number)), float(number)


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A checked file in Arrow form: `rows` records with columns row, text_a, [text_b],
    key, value. `kind` is 'number' or 'word'; `integral` whether every number is whole;
    `counts` the records per label key (None past MAX_CLASSES keys)."""

    source: Path
    table: Path
    rows: int
    pairs: bool
    kind: str
    integral: bool
    counts: dict | None
    first: dict  # the first record's {'row', 'label'}: where a label of the wrong kind is


def _schema(pairs: bool) -> pa.Schema:
    fields = [("row", pa.int64()), ("text_a", pa.string())]
    fields += [("text_b", pa.string())] * pairs + [("key", pa.string()), ("value", pa.float64())]
    return pa.schema(fields)


def _write(path: Path, text: Sequence[str], label: str, out: Path) -> dict:
    """Check every row of `path` and write it to `out`; returns the record's label facts."""
    kind = first = None
    integral, rows = True, 0
    counts: Counter | None = Counter()
    schema = _schema(len(text) == 2)
    with pa.OSFile(str(out), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
        for numbers, chunk in _chunks(path, [*text, label]):
            keys, values = [], []
            for i, row in enumerate(numbers):
                for c in text:
                    _text(chunk[c][i], path, row, c)
                k, key, value = _label(chunk[label][i], path, row, label)
                if kind is None:
                    kind, first = k, {"row": row, "label": chunk[label][i]}
                elif k != kind:
                    raise ValueError(
                        f"{path}, row {row}, column {label!r}: the label {chunk[label][i]!r} is "
                        f"a {k} but row {first['row']}'s label {first['label']!r} is a {kind} "
                        "(mixed label types)"
                    )
                integral = integral and (value is None or value.is_integer())
                keys.append(key)
                values.append(value)
            if counts is not None:
                counts.update(keys)
                counts = counts if len(counts) <= MAX_CLASSES else None
            names = ["text_a", "text_b"][: len(text)]
            arrays = {"row": list(numbers), **{n: chunk[c] for n, c in zip(names, text)}}
            batch = pa.RecordBatch.from_pydict({**arrays, "key": keys, "value": values}, schema)
            writer.write_batch(batch)
            rows += len(keys)
    if rows == 0:
        raise ValueError(f"{path}: the file has no rows")
    return {
        "rows": rows,
        "kind": kind,
        "integral": integral,
        "counts": None if counts is None else dict(sorted(counts.items())),
        "first": first,
    }


def default_cache_dir() -> Path:
    return Path(os.environ.get("MOREJAX_DATA_CACHE") or "~/.cache/morejax/data").expanduser()


def prepare(
    path: str | os.PathLike,
    text: Sequence[str],
    label: str,
    cache_dir: str | os.PathLike | None = None,
) -> Prepared:
    """The file checked and in Arrow form, prepared again only when its content changed."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist")
    file_format(path)
    text = columns(text)
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    ident = json.dumps([os.fspath(path.resolve()), text, label, VERSION])
    folder = cache / f"{path.name}-{hashlib.sha256(ident.encode()).hexdigest()[:12]}"
    fingerprint = {"size": path.stat().st_size, "sha256": folders.sha256(path)}
    try:
        record = json.loads((folder / _RECORD).read_text())
    except (OSError, ValueError):
        record = None
    if record is None or record.get("file") != fingerprint:
        again = "" if record is None else " again"
        why = "" if record is None else ": it changed since it was prepared"
        _say(f"preparing {path}{again} ({fingerprint['size']:,} bytes){why}")
        t0 = time.perf_counter()
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".preparing-", dir=cache) as tmp:
            new = Path(tmp) / "new"
            new.mkdir()
            facts = _write(path, text, label, new / _TABLE)
            record = {"source": os.fspath(path.resolve()), "file": fingerprint, **facts}
            (new / _RECORD).write_text(json.dumps(record, indent=1))
            if folder.exists():
                os.replace(folder, Path(tmp) / "old")  # removed with tmp
            os.replace(new, folder)
        _say(f"prepared {record['rows']:,} rows of {path.name} in {time.perf_counter() - t0:.1f} s")
    return Prepared(
        source=path,
        table=folder / _TABLE,
        rows=record["rows"],
        pairs=len(text) == 2,
        kind=record["kind"],
        integral=record["integral"],
        counts=record["counts"],
        first=record["first"],
    )


def read_table(prepared: Prepared) -> pa.Table:
    """The prepared records, memory-mapped (nothing is copied into Python objects)."""
    return pa.ipc.open_file(pa.memory_map(os.fspath(prepared.table))).read_all()


# ----------------------------------------------------------------------------- a run's splits


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
