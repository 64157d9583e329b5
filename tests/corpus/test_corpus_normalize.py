"""The pure normalizer: stable ids, dedup, seed-stable sampling, and a bad-rows file fully accounted for."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq

from treasure.corpus.config import FileSource
from treasure.corpus.normalize import normalize_source
from treasure.corpus.schema import ParsedRecord, make_id
from treasure.corpus.sources import read_file_source


def test_ids_are_stable_and_content_addressed():
    a = make_id("s", "prompt", "response")
    assert a == make_id("s", "prompt", "response") and a.startswith("s:") and len(a) == len("s:") + 16
    # The separator keeps (prompt, response) pairs apart that concatenate to the same text.
    assert make_id("s", "ab", "c") != make_id("s", "a", "bc")
    assert make_id("s", "p", "r") != make_id("t", "p", "r")
    rows = normalize_source("s", [ParsedRecord("f:1", "  prompt\n", "response ")], None, 0).rows
    assert rows[0]["id"] == a  # ids hash the stripped text


def test_duplicates_are_counted_and_first_kept():
    items = [ParsedRecord(f"f:{i}", p, r, metadata={"n": i}) for i, (p, r) in
             enumerate([("a", "1"), ("b", "2"), ("a", "1"), ("a", "2"), ("b", "2")])]
    got = normalize_source("s", items, None, 0)
    assert [json.loads(r["metadata"])["n"] for r in got.rows] == [0, 1, 3]
    assert got.duplicates == 2 and got.counts()["records"] == 5


def test_cap_is_seed_stable_and_nested():
    items = [ParsedRecord(f"f:{i}", f"q{i}", f"a{i}") for i in range(200)]
    small = normalize_source("s", items, 20, seed=7)
    again = normalize_source("s", list(reversed(items)), 20, seed=7)
    bigger = normalize_source("s", items, 50, seed=7)
    other = normalize_source("s", items, 20, seed=8)
    ids = lambda r: {row["id"] for row in r.rows}  # noqa: E731
    assert len(small.rows) == 20 and small.capped == 180
    assert ids(small) == ids(again)                  # file order does not matter
    assert ids(small) <= ids(bigger)                 # a bigger cap keeps what a smaller one kept
    assert ids(small) != ids(other)                  # the seed does
    assert [r["prompt"] for r in small.rows] == sorted((r["prompt"] for r in small.rows), key=lambda p: int(p[1:]))


def bad_rows_source(path) -> FileSource:
    return FileSource(type="file", path=str(path), prompt=["q"], response="a", metadata_fields=["topic"],
                      metadata={"domain_hint": "Unspecified"}, language="English")


def test_bad_rows_file_is_fully_accounted_for(tmp_path, bad_rows):
    (tmp_path / "bad.jsonl").write_bytes(bad_rows)
    read = read_file_source(bad_rows_source(tmp_path / "bad.jsonl"), "unused")
    got = normalize_source("user", read.items, None, 0)
    non_blank = sum(1 for line in bad_rows.split(b"\n") if line.strip())
    assert got.records == non_blank == len(got.rows) + len(got.errors) + got.duplicates
    assert [r["prompt"] for r in got.rows] == ["What is 2+2?", "Capital of Italy?"]
    assert json.loads(got.rows[0]["metadata"]) == {"domain_hint": "Unspecified", "topic": "math"}
    assert got.duplicates == 1
    reasons = {e["record"]: e["reason"] for e in got.errors}
    assert reasons == {
        "bad.jsonl:2": "invalid JSON (truncated?): Expecting value at column 28",
        "bad.jsonl:3": "wrong type: field 'q' is int, expected a string",
        "bad.jsonl:4": "empty response",
        "bad.jsonl:5": "invalid UTF-8 in prompt",
        "bad.jsonl:7": "missing field 'q'",
        "bad.jsonl:8": "wrong type: record is list, expected an object",
        "bad.jsonl:9": "invalid UTF-8 in metadata",
    }
    for e in got.errors:  # raw is always storable text
        e["raw"].encode("utf-8")
    assert "bad bytes" in next(e["raw"] for e in got.errors if e["record"] == "bad.jsonl:5")


def test_json_array_and_parquet_files(tmp_path):
    records = [{"q": "one", "a": "1"}, {"q": "two", "a": 2}, "three", {"q": "four", "a": "4"}]
    (tmp_path / "x.json").write_bytes(json.dumps(records).encode().replace(b"four", b"f\xffour"))
    got = normalize_source("u", read_file_source(bad_rows_source(tmp_path / "x.json"), "").items, None, 0)
    assert [r["prompt"] for r in got.rows] == ["one"]
    assert [(e["record"], e["reason"].split(":")[0]) for e in got.errors] == [
        ("x.json[1]", "wrong type"), ("x.json[2]", "wrong type"), ("x.json[3]", "invalid UTF-8 in prompt")]
    # A JSON array that does not parse is one error row: its records cannot be told apart.
    (tmp_path / "broken.json").write_text('[{"q": "one", "a": "1"}, {"q": ')
    broken = read_file_source(bad_rows_source(tmp_path / "broken.json"), "").items
    assert len(broken) == 1 and broken[0].reason.startswith("invalid JSON file")
    pq.write_table(pa.table({"q": ["p1", "p2", None], "a": ["r1", "", "r3"], "topic": ["t", "t", "t"]}),
                   tmp_path / "x.parquet")
    got = normalize_source("u", read_file_source(bad_rows_source(tmp_path / "x.parquet"), "").items, None, 0)
    assert [r["prompt"] for r in got.rows] == ["p1"]
    assert [e["reason"] for e in got.errors] == ["empty response", "missing field 'q' (null)"]
