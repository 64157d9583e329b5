"""File formats → raw records: JSONL, JSON arrays and Parquet, from bytes read off any storage.

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


def parquet_records(data: bytes, name: str) -> Iterator[Parsed]:
    """One record per Parquet row, labelled `name[<row>]`; an unreadable file is one error row."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(pa.BufferReader(data)).to_pylist()
    except (pa.ArrowException, OSError) as e:
        yield Rejected(name, f"unreadable Parquet file: {e}", "")
        return
    for index, obj in enumerate(rows):
        yield _as_record(f"{name}[{index}]", obj)


def records(data: bytes, name: str, fmt: str = "auto") -> Iterator[Parsed]:
    """Parse `data` (named `name`, optionally gzip-compressed `.gz`) in format `fmt` or by extension."""
    base = name[:-3] if name.endswith(".gz") else name
    if name.endswith(".gz"):
        data = gzip.GzipFile(fileobj=io.BytesIO(data)).read()
    if fmt == "auto":
        fmt = {"jsonl": "jsonl", "json": "json", "parquet": "parquet"}.get(base.rsplit(".", 1)[-1], "")
        if not fmt:
            raise ValueError(f"{name}: cannot tell the format from the extension; set format: jsonl|json|parquet")
    parse = {"jsonl": jsonl_records, "json": json_array_records, "parquet": parquet_records}[fmt]
    return parse(data, base.rsplit("/", 1)[-1])
