"""Fixtures of the corpus tests: a file of bad rows (the MLflow store is tests/conftest.py's `mlflow_store`).

`s3_server` / `s3_bucket` live in tests/conftest.py.
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def bad_rows() -> bytes:
    """A JSONL file (fields q, a, topic) with one of each kind of bad record; see the comments."""
    return b"\n".join([
        b'{"q": "What is 2+2?", "a": "4", "topic": "math"}',
        b'{"q": "Name a color", "a": ',                                # truncated JSON
        b'{"q": 5, "a": "five"}',                                      # wrong type
        b'{"q": "Say nothing", "a": "   "}',                           # empty response
        b'{"q": "bad bytes \xff\xfe here", "a": "x"}',                 # invalid UTF-8
        b'{"q": "What is 2+2?", "a": "4", "topic": "again"}',          # duplicate of line 1
        b'{"a": "no prompt field"}',                                   # missing field
        b'[1, 2, 3]',                                                  # not an object
        b'{"q": "Capital of France?", "a": "Paris", "topic": "\xc3"}',  # invalid UTF-8 in metadata
        b'',                                                           # blank line: layout, not a record
        b'{"q": "Capital of Italy?", "a": "Rome", "topic": "geo"}',
    ])
