"""File formats → raw records: JSONL, JSON arrays, Parquet, CSV and Arrow (a saved HF `datasets`
folder's data files), from bytes read off any storage.

Each parser yields `(record_label, dict)` for a parsed record or a `Rejected` for one that could
not be parsed, so a broken line is reported, never skipped. Bytes that are not valid UTF-8 are
decoded with ``surrogateescape``: the record still parses, and the normalizer rejects the field
that holds them ("invalid UTF-8 in prompt"), keeping the rest of the record readable in `raw`.
Blank lines of a JSONL file are layout, not records.

>>> list(jsonl_records(b'{"a": 1}\\n\\n{"a": ', "f.jsonl"))[1].reason
'invalid JSON (truncated?): Expecting value at column 7'
"""

from __future__ import annotations

import gzip
import io
import json
from typing import Iterator, Union

from treasure.corpus.schema import Rejected
from treasure.json_input import JSONInputError, parse_json

Parsed = Union[tuple[str, dict], Rejected]


def decode(data: bytes) -> str:
    """Bytes → text; invalid UTF-8 bytes survive as lone surrogates for the normalizer to catch."""
    return data.decode("utf-8", "surrogateescape")


def _as_record(label: str, obj) -> Parsed:
    if not isinstance(obj, dict):
        return Rejected(label, f"wrong type: record is {type(obj).__name__}, expected an object", json.dumps(obj, default=str))
    return label, obj


def jsonl_records(data: bytes, name: str) -> Iterator[Parsed]:
    """One record per non-blank line, labelled `name:<line number>`."""
    for number, line in enumerate(decode(data).split("\n"), start=1):
        if not line.strip():
            continue
        label = f"{name}:{number}"
        try:
            obj = parse_json(line)
        except JSONInputError as e:  # invalid (truncated?), too deep, a number too long: this row's outcome
            why = f"{e.msg} at column {e.colno}" if e.msg else str(e)
            yield Rejected(label, f"invalid JSON (truncated?): {why}", line)
            continue
        yield _as_record(label, obj)


def json_array_records(data: bytes, name: str) -> Iterator[Parsed]:
    """One record per element of a top-level JSON array, labelled `name[<index>]`.

    A file that does not parse is one error row (its records cannot be told apart).
    """
    try:
        items = parse_json(decode(data))
    except JSONInputError as e:
        why = f"{e.msg} at line {e.lineno} column {e.colno}" if e.msg else str(e)
        yield Rejected(name, f"invalid JSON file: {why}", decode(data))
        return
    if not isinstance(items, list):
        yield Rejected(name, f"wrong type: file holds a {type(items).__name__}, expected a JSON array", decode(data))
        return
    for index, obj in enumerate(items):
        yield _as_record(f"{name}[{index}]", obj)


def _table_records(read, data: bytes, name: str, kind: str) -> Iterator[Parsed]:
    """One record per row of the Arrow table `read(buffer)` gives, labelled `name[<row>]`; an
    unreadable file is one error row."""
    import pyarrow as pa

    try:
        rows = read(pa.BufferReader(data)).to_pylist()
    except (pa.ArrowException, OSError) as e:
        yield Rejected(name, f"unreadable {kind} file: {e}", "")
        return
    for index, obj in enumerate(rows):
        yield _as_record(f"{name}[{index}]", obj)


def parquet_records(data: bytes, name: str) -> Iterator[Parsed]:
    """One record per Parquet row, labelled `name[<row>]`; an unreadable file is one error row."""
    import pyarrow.parquet as pq

    return _table_records(pq.read_table, data, name, "Parquet")


def _read_arrow_ipc(buffer):
    import pyarrow as pa

    try:
        return pa.ipc.open_stream(buffer).read_all()
    except pa.ArrowInvalid:  # the IPC file format, not the stream format
        buffer.seek(0)
        return pa.ipc.open_file(buffer).read_all()


def arrow_records(data: bytes, name: str) -> Iterator[Parsed]:
    """One record per row of an Arrow IPC stream (what HF `datasets` `save_to_disk` writes as
    `data-*.arrow`; the file format is read too), labelled `name[<row>]`."""
    return _table_records(_read_arrow_ipc, data, name, "Arrow")


def csv_records(data: bytes, name: str) -> Iterator[Parsed]:
    """One record per CSV row after the header (every value a string), labelled `name:<row>`;
    a row with more or fewer values than the header has names is rejected, not padded."""
    import csv

    reader = csv.reader(io.StringIO(decode(data), newline=""))
    try:
        header = next(reader)
    except (StopIteration, csv.Error):
        return
    row_number = 0
    while True:
        row_number += 1
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as e:  # e.g. a NUL byte; the reader cannot go on past it
            yield Rejected(f"{name}:{row_number}", f"invalid CSV: {e}", "")
            return
        if not values:
            continue
        label = f"{name}:{row_number}"
        if len(values) != len(header):
            yield Rejected(label, f"wrong number of values: {len(values)} for {len(header)} columns", ",".join(values))
            continue
        yield label, dict(zip(header, values))


PARSERS = {"jsonl": jsonl_records, "json": json_array_records, "parquet": parquet_records,
           "csv": csv_records, "arrow": arrow_records}
EXTENSIONS = {"jsonl": "jsonl", "ndjson": "jsonl", "json": "json", "parquet": "parquet", "csv": "csv", "arrow": "arrow"}


def format_of(name: str, fmt: str = "auto") -> str:
    """`fmt`, or the format that `name`'s extension (under an optional `.gz`) says."""
    if fmt != "auto":
        return fmt
    base = name[:-3] if name.endswith(".gz") else name
    found = EXTENSIONS.get(base.rsplit("/", 1)[-1].rsplit(".", 1)[-1].lower(), "")
    if not found:
        raise ValueError(f"{name}: cannot tell the format from the extension; set format: {'|'.join(PARSERS)}")
    return found


def records(data: bytes, name: str, fmt: str = "auto", label: str | None = None) -> Iterator[Parsed]:
    """Parse `data` (named `name`, optionally gzip-compressed `.gz`) in format `fmt` or by extension.
    Records are labelled with `label` (default: `name`'s last part without `.gz`); files found in a
    folder pass their path below it, so labels stay distinct (`train/part-0.jsonl:3`)."""
    fmt = format_of(name, fmt)
    if name.endswith(".gz"):
        data = gzip.GzipFile(fileobj=io.BytesIO(data)).read()
        name = name[:-3]
    return PARSERS[fmt](data, label or name.rsplit("/", 1)[-1])
