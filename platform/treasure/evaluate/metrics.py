"""Pure metrics: rates with Wilson intervals, bootstrap intervals, win rate with ties, head/tail bands.

Nothing here touches a model, Ray or MLflow; every function is checked on hand-computed cases.

>>> round(violation_rate([10, 30, 50], limit=20).rate, 4)
0.6667
>>> band_of(0.01, tail_fraction=0.05), band_of(0.2, tail_fraction=0.05)
('tail', 'head')
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

Z95 = 1.959963984540054  # two-sided 95% normal quantile


@dataclass
class Rate:
    """k successes out of n with a 95% interval (NaN everywhere when n = 0)."""

    k: int
    n: int
    rate: float
    low: float
    high: float

    def as_dict(self) -> dict:
        return asdict(self)


def wilson(k: int, n: int, z: float = Z95) -> Rate:
    """k/n with the Wilson score interval (sound at 0% and 100%, unlike the normal interval)."""
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return Rate(0, 0, math.nan, math.nan, math.nan)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return Rate(k, n, p, max(0.0, centre - half), min(1.0, centre + half))


def violation_rate(lengths: Iterable[int], limit: int | Sequence[int]) -> Rate:
    """Share of answers longer than their limit (one limit for all, or one per answer)."""
    lengths = list(lengths)
    limits = list(limit) if isinstance(limit, Sequence) else [limit] * len(lengths)
    if len(limits) != len(lengths):
        raise ValueError("one limit per answer")
    return wilson(sum(n > m for n, m in zip(lengths, limits)), len(lengths))


def accuracy(predicted: Sequence[str | None], expected: Sequence[str]) -> Rate:
    """Share of exact matches; a missing prediction (None) counts as wrong."""
    if len(predicted) != len(expected):
        raise ValueError("one prediction per expected value")
    return wilson(sum(p is not None and p == e for p, e in zip(predicted, expected)), len(expected))


def adherence(observed: Sequence[str | None], requested: Sequence[str]) -> Rate:
    """Share of answers whose re-annotated value equals the requested one (same arithmetic as accuracy)."""
    return accuracy(observed, requested)


def bootstrap_ci(values: Sequence[float], *, n_resamples: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): percentile bootstrap of the mean, reproducible under `seed`."""
    values = list(values)
    if not values:
        return math.nan, math.nan, math.nan
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(n_resamples))
    lo_i = int(math.floor((1 - level) / 2 * n_resamples))
    hi_i = min(n_resamples - 1, int(math.ceil((1 + level) / 2 * n_resamples)) - 1)
    return sum(values) / n, means[lo_i], means[hi_i]


OUTCOME_SCORE = {"win": 1.0, "tie": 0.5, "loss": 0.0}


def win_rate(outcomes: Sequence[str], *, n_resamples: int = 2000, seed: int = 0) -> dict:
    """Win rate of A over B from per-pair outcomes ("win", "tie", "loss", "failed").

    A tie counts half. Failed judgements (malformed judge answers, errors) are counted and
    excluded: never a win, never a loss.
    """
    unknown = set(outcomes) - set(OUTCOME_SCORE) - {"failed"}
    if unknown:
        raise ValueError(f"unknown outcomes {sorted(unknown)}")
    counts = Counter(outcomes)
    scores = [OUTCOME_SCORE[o] for o in outcomes if o != "failed"]
    mean, low, high = bootstrap_ci(scores, n_resamples=n_resamples, seed=seed)
    return {"win_rate": mean, "low": low, "high": high, "n": len(scores), "wins": counts["win"],
            "ties": counts["tie"], "losses": counts["loss"], "failed": counts["failed"]}


def combine_orders(first: str, second: str) -> str:
    """One pair's outcome from its two judged orders, both already expressed from A's side.

    Each order scores win 1, tie 0.5, loss 0; the mean decides (position bias cancels: A winning
    in one order and losing in the other is a tie). Either order failed → the pair failed.
    """
    if "failed" in (first, second):
        return "failed"
    score = (OUTCOME_SCORE[first] + OUTCOME_SCORE[second]) / 2
    return "win" if score > 0.5 else "loss" if score < 0.5 else "tie"


def band_of(share: float, tail_fraction: float = 0.05) -> str:
    """'tail' when a value covers under `tail_fraction` of rows, else 'head'."""
    return "tail" if share < tail_fraction else "head"


def value_bands(counts: dict[str, dict[str, int]], tail_fraction: float = 0.05) -> dict[str, dict[str, str]]:
    """{category: {value: band}} from {category: {value: rows}} (shares over all rows of the category)."""
    out: dict[str, dict[str, str]] = {}
    for cat, per_value in counts.items():
        total = sum(per_value.values())
        out[cat] = {v: band_of(c / total, tail_fraction) for v, c in per_value.items()} if total else {}
    return out


def grouped_rate(keys: Sequence[str], hits: Sequence[bool]) -> dict[str, Rate]:
    """{key: Rate of hits} for rows grouped by key (keys in first-seen order)."""
    groups: dict[str, list[bool]] = {}
    for k, h in zip(keys, hits):
        groups.setdefault(k, []).append(bool(h))
    return {k: wilson(sum(v), len(v)) for k, v in groups.items()}
