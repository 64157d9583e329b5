"""Win rates against the baseline: whether they are measured, which pairs are compared, the head/tail breakdown.

Only a judge measures a win rate (judge.type local or http). A likelihood scorer ranks fluent,
predictable text, not better answers, so with judge.type likelihood or none nothing is computed
and the report says "not measured" with the reason (`not_measured_reason`).

Comparisons (each one row per held-out prompt, candidate = A, baseline = B):
    marked_inferred   marked model, no markers           vs baseline
    quality_steered   marked model, quality_bucket=1 (and quality = bucket 1's p95 where the
                      checkpoint records it)             vs baseline
    length_<cond>     length-control answers where neither side violates the limit
"""

from __future__ import annotations

import json

from treasure.evaluate import metrics
from treasure.evaluate.config import WinRateConfig
from treasure.evaluate.examples import AnnotatedRow
from treasure.taxonomy import Taxonomy
from treasure.template import render_request

BAND_CATEGORIES = ("domain", "task")
JUDGES = ("local", "http")  # the judge types whose verdicts are win rates


def not_measured_reason(config: WinRateConfig) -> str | None:
    """Why win rates are not measured under `config` (None: they are).

    >>> not_measured_reason(WinRateConfig(judge={"type": "http"})) is None
    True
    >>> not_measured_reason(WinRateConfig(judge={"type": "none"}))
    'no judge model configured (win_rate.judge.type=none); set win_rate.judge.type=http with a real judge'
    """
    if config.prompts == 0:
        return "win_rate.prompts is 0"
    if config.judge.type == "likelihood":
        return ("a likelihood scorer is not a judge (win_rate.judge.type=likelihood): it favours fluent, predictable text; "
                "set win_rate.judge.type=http with a real judge")
    if config.judge.type not in JUDGES:
        return f"no judge model configured (win_rate.judge.type={config.judge.type}); set win_rate.judge.type=http with a real judge"
    return None


def quality_markers(language: str | None, quality_reference: dict[str, float], taxonomy: Taxonomy) -> dict[str, str]:
    """quality_bucket 1, plus quality at bucket 1's p95 for the language (or the mean reference)."""
    markers = {"quality_bucket": "1"}
    if "quality" in taxonomy.block_names and quality_reference:
        ref = quality_reference.get(language or "")
        if ref is None:
            ref = sum(quality_reference.values()) / len(quality_reference)
        markers["quality"] = ref
    return taxonomy.block_markers(markers)


def quality_requests(examples: list[AnnotatedRow], quality_reference: dict[str, float], taxonomy: Taxonomy, *, prefill: bool = True) -> list[dict]:
    """One marked-model row per example with the quality markers requested (rendered as serving renders them)."""
    rows = []
    for ex in examples:
        markers = quality_markers(ex.markers.get("language"), quality_reference, taxonomy)
        user_turn, prefix = render_request(ex.prompt, markers, taxonomy, prefill=prefill)
        rows.append({"request_id": f"quality:{ex.id}", "example_id": ex.id, "prompt": ex.prompt, "annotated": json.dumps(ex.markers),
                     "user_turn": user_turn, "prefix": prefix})
    return rows


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
