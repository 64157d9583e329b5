"""The normalized corpus schema: columns, stable ids, and what a reader hands to the normalizer.

A reader turns one input record into either a `ParsedRecord` (fields not yet checked) or a
`Rejected` (it could not even be parsed). The normalizer checks parsed records into rows:

>>> make_id("mathematics", "Add 2 and 3.", "5")
'mathematics:d65e3ed92abc58e7'
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

# One row per example (docs/data-formats.md, normalize section).
ROW_SCHEMA = pa.schema([
    pa.field("id", pa.string(), nullable=False),        # <source>:<16 hex of sha256(prompt \x1f response)>
    pa.field("prompt", pa.string(), nullable=False),    # user turn (instruction + input)
    pa.field("response", pa.string(), nullable=False),  # reference answer
    pa.field("source", pa.string(), nullable=False),    # source name (config key)
    pa.field("language", pa.string()),                  # declared language (taxonomy spelling) or null
    pa.field("metadata", pa.string(), nullable=False),  # JSON object of per-source fields
])

# One row per input record that did not become an example.
ERROR_SCHEMA = pa.schema([
    pa.field("source", pa.string(), nullable=False),
    pa.field("record", pa.string(), nullable=False),    # where: "question.jsonl:12", "alpaca_zh_10000.json[7]"
    pa.field("reason", pa.string(), nullable=False),
    pa.field("raw", pa.string(), nullable=False),       # the record as text, truncated to RAW_LIMIT
])

RAW_LIMIT = 2000


class BadRecord(ValueError):
    """A parsed record whose fields do not fit the source's mapping (reported as an error row)."""


def make_id(source: str, prompt: str, response: str) -> str:
    """Stable id: the same (source, prompt, response) always gets the same id, on any machine."""
    digest = hashlib.sha256(f"{prompt}\x1f{response}".encode("utf-8")).hexdigest()
    return f"{source}:{digest[:16]}"


@dataclass(frozen=True)
class ParsedRecord:
    """One parsed input record, before its fields are checked."""

    record: str
    prompt: Any
    response: Any
    language: Any = None
    metadata: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Rejected:
    """One input record that is reported in the errors table instead of becoming a row."""

    record: str
    reason: str
    raw: str = ""


def clip_raw(text: str) -> str:
    """Raw text for the errors table: bounded, and always encodable as UTF-8."""
    text = text[:RAW_LIMIT]
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
