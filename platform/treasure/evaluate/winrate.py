"""Win rates against the baseline: which pairs are compared, and the breakdown by head/tail band.

Comparisons (each one row per held-out prompt, candidate = A, baseline = B):
    marked_inferred   marked model, no markers           vs baseline
    quality_steered   marked model, quality_bucket=1 (and quality = bucket 1's p95 where the
                      checkpoint records it)             vs baseline
    length_<cond>     length-control answers where neither side violates the limit
"""

from __future__ import annotations

import json

from treasure.evaluate import metrics
from treasure.evaluate.examples import Example
from treasure.taxonomy import Taxonomy
from treasure.template import render_prompt

BAND_CATEGORIES = ("domain", "task")


def quality_markers(language: str | None, quality_reference: dict[str, float], taxonomy: Taxonomy) -> dict[str, str]:
    """quality_bucket 1, plus quality at bucket 1's p95 for the language (or the mean reference)."""
    markers = {"quality_bucket": "1"}
    if "quality" in taxonomy.block_names and quality_reference:
        ref = quality_reference.get(language or "")
        if ref is None:
            ref = sum(quality_reference.values()) / len(quality_reference)
        markers["quality"] = ref
    return taxonomy.block_markers(markers)


def quality_requests(examples: list[Example], quality_reference: dict[str, float], taxonomy: Taxonomy) -> list[dict]:
    return [{"request_id": f"quality:{ex.id}", "example_id": ex.id, "prompt": ex.prompt, "annotated": json.dumps(ex.markers),
             "user_turn": render_prompt(ex.prompt, quality_markers(ex.markers.get("language"), quality_reference, taxonomy), taxonomy)}
            for ex in examples]


def summarize(judgements, annotated: list[dict[str, str]], bands: dict[str, dict[str, str]], *, n_resamples: int, seed: int) -> dict:
    """Overall win rate, and per band of the prompt's annotated domain / task value."""
    outcomes = [j.outcome for j in judgements]
    out = {"overall": metrics.win_rate(outcomes, n_resamples=n_resamples, seed=seed), "bands": {}}
    for cat in BAND_CATEGORIES:
        groups: dict[str, list[str]] = {}
        for o, ann in zip(outcomes, annotated):
            if cat in ann:
                groups.setdefault(bands.get(cat, {}).get(ann[cat], "tail"), []).append(o)
        out["bands"][cat] = {b: metrics.win_rate(v, n_resamples=n_resamples, seed=seed) for b, v in sorted(groups.items())}
    return out
