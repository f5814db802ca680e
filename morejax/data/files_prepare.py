"""A labelled file checked row by row and prepared once into Arrow: an IPC file under a cache
folder, memory-mapped for random access, beside a record of its source's fingerprint (size,
SHA-256). A changed file is prepared again; a failure leaves nothing behind. A prepared file
keeps each label's key ('1', 'pos') and, for numbers, its value."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa

from morejax.data import folders
from morejax.data.files_formats import chunks, file_format

MAX_CLASSES = 1000  # past this many distinct labels a file's keys are not counted
VERSION = 1  # of the prepared layout: a new one prepares every file again
_RECORD, _TABLE = "source.json", "data.arrow"


def _say(msg: str) -> None:
    print(f"morejax.data.files: {msg}", file=sys.stderr, flush=True)


def columns(spec: str | Sequence[str]) -> tuple[str, ...]:
    """`data.text` as column names: 'sentence' or 'sentence1,sentence2'."""
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    names = tuple(n.strip() for n in names)
    if not 1 <= len(names) <= 2 or not all(names):
        raise ValueError(f"data.text={spec!r}: name one text column, or two for sentence pairs")
    return names


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
        for numbers, chunk in chunks(path, [*text, label]):
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
