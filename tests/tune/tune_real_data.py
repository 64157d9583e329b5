"""A small committed annotated dataset for the real-trial test (docs/data-formats.md layout).

Answer length follows `length_bucket` and the domain decides the prompt's topic words, so the
markers carry signal a tiny model can pick up; one domain is rare (the tail band).
"""

from __future__ import annotations

import io
import json
import random

WORDS = "river stone light quiet paper garden window music bread winter morning letter bridge cloud".split()
DOMAINS = [("Culture", 0.45), ("Sciences", 0.45), ("Legal", 0.1)]  # Legal: the rare (tail) domain


def make_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        domain = rng.choices([d for d, _ in DOMAINS], [w for _, w in DOMAINS])[0]
        bucket = rng.choice(["concise", "medium"])
        words = rng.randint(3, 8) if bucket == "concise" else rng.randint(20, 30)
        prompt = f"{domain}: write about the {rng.choice(WORDS)}."
        response = " ".join(rng.choice(WORDS) for _ in range(words)) + "."
        markers = {"length_bucket": bucket, "task": "OpenEnded", "domain": domain, "language": "English"}
        rows.append({"id": f"toy:{i:05d}", "prompt": prompt, "response": response, "source": "toy", "language": "English",
                     "metadata": "{}", "markers": json.dumps(markers), "provenance": "{}"})
    return rows


def write_annotated(uri: str, rows: list[dict], taxonomy_version: str) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from treasure import storage

    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    target = storage.join(uri, "data", "part-00000.parquet")
    storage.write_bytes(target, buf.getvalue())
    return storage.commit_manifest(uri, [target], {"rows": len(rows), "error_rows": 0, "input_rows": len(rows),
                                                   "taxonomy_version": taxonomy_version, "config": {}})
