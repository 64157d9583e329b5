"""Untrusted JSON in: every way a text can fail to be acceptable JSON is one `JSONInputError`.

`json.loads` fails in three ways on hostile input, and only one of them is a `JSONDecodeError`:
deep nesting (~1,000 levels fit in a 2 KB body) raises `RecursionError`, and an integer of more
than 4,300 digits raises a plain `ValueError` (CPython's int-size guard). Callers that caught only
the first answered 500 or aborted a whole stage. `parse_json` turns all three into a clear
`ValueError` subclass, and with `max_depth` refuses deep nesting before parsing (so nothing
downstream, pydantic included, ever recurses that deep).

>>> parse_json('{"a": [1, 2]}')
{'a': [1, 2]}
>>> parse_json("[" * 50 + "]" * 50, max_depth=32)
Traceback (most recent call last):
...
treasure.json_input.JSONInputError: JSON nested 50 levels deep; at most 32 are accepted
"""

from __future__ import annotations

import json
from typing import Any


class JSONInputError(ValueError):
    """The text is not acceptable JSON (the message says why; `msg`, `lineno`, `colno` as in
    json.JSONDecodeError when the text is simply malformed, else None)."""

    def __init__(self, message: str, decode_error: json.JSONDecodeError | None = None):
        super().__init__(message)
        self.msg = decode_error.msg if decode_error else None
        self.lineno = decode_error.lineno if decode_error else None
        self.colno = decode_error.colno if decode_error else None


def nesting_depth(text: str) -> int:
    """Deepest `[`/`{` nesting outside strings (a scan, no parsing).

    >>> nesting_depth('{"a": "[[[", "b": [[1]]}')
    3
    """
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def parse_json(text: str | bytes, max_depth: int | None = None) -> Any:
    """`json.loads(text)`, or JSONInputError (invalid, not UTF-8, nested deeper than `max_depth`,
    a number too long, or nesting deeper than the interpreter's recursion limit)."""
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
    except UnicodeDecodeError as e:
        raise JSONInputError(f"not UTF-8 text: {e.reason} at byte {e.start}") from None
    if max_depth is not None and (depth := nesting_depth(text)) > max_depth:
        raise JSONInputError(f"JSON nested {depth} levels deep; at most {max_depth} are accepted")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise JSONInputError(f"not valid JSON: {e.msg} at line {e.lineno} column {e.colno}", e) from None
    except RecursionError:
        raise JSONInputError("JSON nested too deeply to parse") from None
    except ValueError as e:  # CPython's guard against huge integers ("Exceeds the limit (4300 digits)...")
        raise JSONInputError(f"JSON not accepted: {e}") from None
