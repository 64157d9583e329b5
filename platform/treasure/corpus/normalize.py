"""The pure normalizer: reader items → checked rows, error rows, duplicates and a seed-stable sample.

Every input record of a source ends in exactly one bucket, and `normalize_source` asserts it:

    records = rows + errors + duplicates + capped

- error: could not be parsed, or a field is missing, of the wrong type, not valid UTF-8, or empty;
- duplicate: same id (same source, prompt and response) as an earlier record; the first is kept;
- capped: a valid row left out by `max_rows`, chosen by a hash of (seed, id), so the kept rows do
  not depend on file order and a bigger cap keeps every row a smaller one kept.

>>> from treasure.corpus.schema import ParsedRecord
>>> r = normalize_source("demo", [ParsedRecord("f:1", " 2+3? ", "5"), ParsedRecord("f:2", "2+3?", "5"),
...                               ParsedRecord("f:3", "", "x")], max_rows=None, seed=0)
>>> [row["prompt"] for row in r.rows], r.duplicates, [e["reason"] for e in r.errors]
(['2+3?'], 1, ['empty prompt'])
"""

from __future__ import annotations

import hashlib
import heapq
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

from treasure.corpus.schema import ParsedRecord, Rejected, clip_raw, make_id


@dataclass
class SourceResult:
    """One source's outcome: rows and error rows (as column dicts) and its counts."""

    source: str
    rows: list[dict] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)
    duplicates: int = 0
    capped: int = 0
    records: int = 0
    stats: dict = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        return {"records": self.records, "rows": len(self.rows), "errors": len(self.errors),
                "duplicates": self.duplicates, "capped": self.capped, **self.stats}


def _text_problem(name: str, value) -> str | None:
    """Why `value` cannot be the text field `name`, or None when it can."""
    if value is None:
        return f"missing {name}"
    if not isinstance(value, str):
        return f"wrong type: {name} is {type(value).__name__}, expected a string"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: bytes that were not UTF-8 in the input
        return f"invalid UTF-8 in {name}"
    if not value.strip():
        return f"empty {name}"
    return None


def check(source: str, item: ParsedRecord) -> dict | Rejected:
    """A checked row (columns of schema.ROW_SCHEMA) or the reason the record is rejected."""
    problem = (_text_problem("prompt", item.prompt) or _text_problem("response", item.response)
               or (item.language is not None and _text_problem("language", item.language)) or None)
    metadata = None
    if problem is None and not isinstance(item.metadata, dict):
        problem = f"wrong type: metadata is {type(item.metadata).__name__}"
    elif problem is None:
        try:
            metadata = json.dumps(item.metadata, ensure_ascii=False, sort_keys=True)
            metadata.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates: bytes that were not UTF-8 in the input
            problem = "invalid UTF-8 in metadata"
        except (TypeError, ValueError) as e:
            problem = f"wrong type: metadata: {e}"
    if problem:
        raw = {"prompt": item.prompt, "response": item.response, "metadata": item.metadata}
        return Rejected(item.record, problem, json.dumps(raw, ensure_ascii=False, default=repr))
    prompt, response = item.prompt.strip(), item.response.strip()
    return {"id": make_id(source, prompt, response), "prompt": prompt, "response": response,
            "source": source, "language": item.language, "metadata": metadata}


def sample_key(seed: int, row_id: str) -> str:
    return hashlib.sha256(f"{seed}:{row_id}".encode()).hexdigest()


class Tally:
    """One source's exactly-once accounting, fed one outcome at a time (in input order) by the
    in-memory `normalize_source` and by the normalize stage's streaming driver alike."""

    def __init__(self, source: str, max_rows: int | None, seed: int):
        self.source, self.max_rows, self.seed = source, max_rows, seed
        self.records = self.errors = self.duplicates = 0
        self.seen: set[str] = set()  # ids only: memory grows with the row count, not the text
        self.stats: dict = {}
        self.reasons: Counter = Counter()  # error rows by the kind of reason (its text before ':')

    def admit(self, row_id: str) -> bool:
        """Count a checked row; True when it is the first with its id (kept), False for a duplicate."""
        self.records += 1
        if row_id in self.seen:
            self.duplicates += 1
            return False
        self.seen.add(row_id)
        return True

    def reject(self, reason: str) -> None:
        """Count a record that became an error row."""
        self.records += 1
        self.errors += 1
        self.reasons[reason.split(":")[0]] += 1

    def keep(self) -> set[str] | None:
        """The ids `max_rows` keeps (the smallest seed-stable hashes), or None when nothing is capped."""
        if self.max_rows is None or len(self.seen) <= self.max_rows:
            return None
        return set(heapq.nsmallest(self.max_rows, self.seen, key=lambda i: sample_key(self.seed, i)))

    @property
    def capped(self) -> int:
        return max(0, len(self.seen) - self.max_rows) if self.max_rows is not None else 0

    def counts(self) -> dict[str, int]:
        """{records, rows, errors, duplicates, capped, ...stats}; raises unless every record is in one bucket."""
        rows = len(self.seen) - self.capped
        accounted = rows + self.errors + self.duplicates + self.capped
        if self.records != accounted:  # not `assert`: this check must survive `python -O`
            raise AssertionError(f"{self.source}: {self.records} records but {accounted} accounted for")
        return {"records": self.records, "rows": rows, "errors": self.errors, "duplicates": self.duplicates,
                "capped": self.capped, **self.stats}


def normalize_source(source: str, items: Iterable[ParsedRecord | Rejected], max_rows: int | None, seed: int,
                     stats: dict | None = None) -> SourceResult:
    """Check, dedup and cap one source's items in memory; every item is accounted for exactly once."""
    result, tally = SourceResult(source, stats=dict(stats or {})), Tally(source, max_rows, seed)
    for item in items:
        outcome = item if isinstance(item, Rejected) else check(source, item)
        if isinstance(outcome, Rejected):
            tally.reject(outcome.reason)
            result.errors.append({"source": source, "record": outcome.record, "reason": outcome.reason,
                                  "raw": clip_raw(outcome.raw)})
        elif tally.admit(outcome["id"]):
            result.rows.append(outcome)
    keep = tally.keep()
    if keep is not None:
        result.rows = [r for r in result.rows if r["id"] in keep]  # input order is kept
    counts = tally.counts()
    result.records, result.duplicates, result.capped = counts["records"], counts["duplicates"], counts["capped"]
    return result
