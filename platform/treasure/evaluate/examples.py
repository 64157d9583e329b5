"""Held-out examples and marker value counts, read from a committed annotated dataset.

Training rows (not held out) give the value frequencies behind the head/tail bands; held-out rows
give the prompts and reference markers. The split is `treasure.heldout.is_heldout`.
"""

from __future__ import annotations

import io
import json
import random
from collections import Counter
from dataclasses import dataclass

from treasure import storage
from treasure.heldout import is_derived, is_heldout


@dataclass
class AnnotatedRow:
    """One row of a committed annotated dataset, markers as written (training and held-out rows alike)."""

    id: str
    prompt: str
    response: str
    markers: dict[str, str]


def read_annotated(uri: str) -> tuple[list[AnnotatedRow], dict]:
    """All rows of a committed annotated dataset and its manifest; a clear error if nothing is committed."""
    import pyarrow.parquet as pq

    manifest = storage.read_manifest(uri)
    if manifest is None:
        raise FileNotFoundError(f"{uri} holds no committed dataset (no manifest.json); run the annotate stage first")
    rows: list[AnnotatedRow] = []
    for entry in manifest["files"]:
        if not entry["path"].startswith("data/"):
            continue
        table = pq.read_table(io.BytesIO(storage.read_bytes(storage.join(uri, entry["path"]))),
                              columns=["id", "prompt", "response", "markers"])
        for r in table.to_pylist():
            rows.append(AnnotatedRow(r["id"], r["prompt"], r["response"], json.loads(r["markers"] or "{}")))
    return rows, manifest


def split(rows: list[AnnotatedRow], seed: int, fraction: float) -> tuple[list[AnnotatedRow], list[AnnotatedRow]]:
    """(training rows, held-out rows), each sorted by id so the order never depends on files."""
    train = sorted((r for r in rows if not is_heldout(r.id, seed, fraction)), key=lambda r: r.id)
    held = sorted((r for r in rows if is_heldout(r.id, seed, fraction) and not is_derived(r.id)), key=lambda r: r.id)
    return train, held


def value_counts(rows: list[AnnotatedRow]) -> dict[str, dict[str, int]]:
    """{category: {value: rows}} over `rows`."""
    counts: dict[str, Counter] = {}
    for r in rows:
        for cat, val in r.markers.items():
            counts.setdefault(cat, Counter())[val] += 1
    return {c: dict(v.most_common()) for c, v in counts.items()}


def sample(rows: list[AnnotatedRow], n: int, seed: int, salt: str) -> list[AnnotatedRow]:
    """Up to n rows, a reproducible draw per (seed, salt)."""
    picked = list(rows)
    random.Random(f"{seed}:{salt}").shuffle(picked)
    return picked[:n]
