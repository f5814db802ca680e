"""Reading your labelled files in chunks: CSV and TSV (pyarrow), JSONL (the standard library;
these three optionally gzip-compressed) and Parquet. Rows count records from 1, a CSV header
excluded; every error is one line naming the file, the row and the column."""

from __future__ import annotations

import csv
import gzip
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import pyarrow as pa

FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".parquet": "parquet"}
CHUNK_ROWS = 65536


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


def chunks(path: Path, need: Sequence[str]):
    """(row numbers, {column: values}) of each chunk of the file, in its format."""
    fmt = file_format(path)
    if fmt == "jsonl":
        return _jsonl_chunks(path, need)
    if fmt == "parquet":
        return _parquet_chunks(path, need)
    return _csv_chunks(path, need, fmt)
