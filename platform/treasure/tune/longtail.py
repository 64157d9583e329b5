"""Long-tail metrics for the objective, derived from the evaluation's full metrics (pure).

The evaluate stage publishes ``metrics.json`` with per-band results; this module pools them into
the few numbers a search optimizes (names under ``longtail.``):

- ``longtail.inference.accuracy``: marker-inference accuracy (no markers given) on tail-band
  values, pooled over categories (sum of hits / sum of rows); ``longtail.inference.head_accuracy``
  the same on the head band;
- ``longtail.length.violation_rate``: length violations with the length marker fixed
  (``marked_marker`` condition);
- ``longtail.win_rate``: win rate against the baseline on tail prompts (markers inferred), pooled
  over the band categories, weighting each by its number of judged prompts.

A number with nothing under it (no tail rows) is NaN, never 0.

>>> m = {"inference": {"bands": {"domain": {"tail": {"k": 3, "n": 4}, "head": {"k": 1, "n": 4}},
...                              "task": {"tail": {"k": 1, "n": 4}}}}}
>>> longtail_metrics(m)["longtail.inference.accuracy"]
0.5
"""

from __future__ import annotations

import math


def pooled(parts: list[tuple[float, float]]) -> float:
    """Sum of numerators / sum of denominators; NaN when the denominators sum to 0."""
    den = sum(d for _, d in parts)
    return sum(k for k, _ in parts) / den if den else math.nan


def longtail_metrics(m: dict) -> dict[str, float]:
    """The ``longtail.*`` metrics of one evaluation's metrics dict (metrics.json)."""
    bands = m.get("inference", {}).get("bands", {})
    out = {
        "longtail.inference.accuracy": pooled([(b["tail"]["k"], b["tail"]["n"]) for b in bands.values() if "tail" in b]),
        "longtail.inference.head_accuracy": pooled([(b["head"]["k"], b["head"]["n"]) for b in bands.values() if "head" in b]),
    }
    fixed = m.get("length_control", {}).get("conditions", {}).get("marked_marker")
    out["longtail.length.violation_rate"] = float(fixed["rate"]) if fixed and fixed.get("n") else math.nan
    tail_wins = []
    for per_band in m.get("win_rates", {}).get("marked_inferred", {}).get("bands", {}).values():
        w = per_band.get("tail")
        if w and w.get("n") and w.get("win_rate") is not None:
            tail_wins.append((w["win_rate"] * w["n"], w["n"]))
    out["longtail.win_rate"] = pooled(tail_wins)
    return out
