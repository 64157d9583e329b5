"""Marker inference: the marked model given no markers writes its own block; compare with annotation.

Accuracy per category counts every held-out example the annotation gave a value for that
category; a missing or malformed inferred value is wrong. Per-value accuracy (by the annotated
value) feeds the long-tail breakdown. Next to each accuracy stands the majority-class rate: what
always answering the category's most frequent training value would score on the same rows, the
floor a model must beat before its inference means anything.
"""

from __future__ import annotations

import json

from treasure.evaluate import metrics
from treasure.evaluate.examples import AnnotatedRow
from treasure.taxonomy import Taxonomy
from treasure.template import render_request


def requests(examples: list[AnnotatedRow], taxonomy: Taxonomy) -> list[dict]:
    """Plain prompts (no block, no prefix): the same rows serve the baseline and the marked model."""
    rows = []
    for ex in examples:
        user_turn, prefix = render_request(ex.prompt, {}, taxonomy)
        rows.append({"request_id": f"plain:{ex.id}", "example_id": ex.id, "prompt": ex.prompt,
                     "annotated": json.dumps(ex.markers), "user_turn": user_turn, "prefix": prefix})
    return rows


def score(rows: list[dict], categories: list[str], bands: dict[str, dict[str, str]],
          train_counts: dict[str, dict[str, int]] | None = None) -> dict:
    """{"block_ok": Rate, "categories": {cat: Rate}, "values": {cat: {value: Rate}}, "bands": {cat: {band: Rate}},
    "majority": {cat: Rate + "value"}} (majority only for categories in `train_counts`)."""
    out: dict = {"block_ok": metrics.wilson(sum(bool(r["block_ok"]) for r in rows), len(rows)).as_dict(),
                 "categories": {}, "values": {}, "bands": {}, "majority": {}}
    for cat in categories:
        expected, predicted = [], []
        for r in rows:
            ann = json.loads(r["annotated"])
            if cat in ann:
                expected.append(ann[cat])
                predicted.append(json.loads(r["inferred"]).get(cat))
        if not expected:
            continue
        out["categories"][cat] = metrics.accuracy(predicted, expected).as_dict()
        if (train_counts or {}).get(cat):
            top = max(train_counts[cat].items(), key=lambda kv: (kv[1], kv[0]))[0]
            out["majority"][cat] = {**metrics.accuracy([top] * len(expected), expected).as_dict(), "value": top}
        hits = [p == e for p, e in zip(predicted, expected)]
        out["values"][cat] = {v: r.as_dict() for v, r in metrics.grouped_rate(expected, hits).items()}
        cat_bands = bands.get(cat, {})
        band_keys = [cat_bands.get(e, "tail") for e in expected]  # a value unseen in training is tail
        out["bands"][cat] = {b: r.as_dict() for b, r in metrics.grouped_rate(band_keys, hits).items()}
    return out
