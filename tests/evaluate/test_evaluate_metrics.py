"""Metrics on hand-computed cases."""

from __future__ import annotations

import math

import pytest

from treasure.evaluate import metrics
from treasure.heldout import is_heldout


def test_violation_rate_counts_strictly_longer():
    r = metrics.violation_rate([10, 20, 21, 50], limit=20)  # 21 and 50 exceed 20; 20 is allowed
    assert (r.k, r.n, r.rate) == (2, 4, 0.5)
    per = metrics.violation_rate([5, 5, 5], [4, 5, 6])
    assert (per.k, per.n) == (1, 3)


def test_wilson_hand_computed():
    # k=2, n=4, z=1.96: centre (0.5 + 0.4802)/1.9604 = 0.5, half = 1.96*sqrt(0.0625+0.0600)/1.9604 = 0.3498
    r = metrics.wilson(2, 4)
    assert r.low == pytest.approx(0.1500, abs=1e-4) and r.high == pytest.approx(0.8500, abs=1e-4)
    zero = metrics.wilson(0, 10)  # Wilson at 0%: low 0, high z²/(n+z²) = 3.8415/13.8415
    assert zero.low == 0.0 and zero.high == pytest.approx(0.2775, abs=1e-4)
    assert math.isnan(metrics.wilson(0, 0).rate)
    with pytest.raises(ValueError):
        metrics.wilson(3, 2)


def test_accuracy_and_adherence_missing_is_wrong():
    r = metrics.accuracy(["Legal", None, "Math", "Code"], ["Legal", "Legal", "Math", "Culture"])
    assert (r.k, r.n, r.rate) == (2, 4, 0.5)
    a = metrics.adherence(["concise", "concise", "long"], ["concise", "medium", "long"])
    assert (a.k, a.n) == (2, 3)
    with pytest.raises(ValueError):
        metrics.accuracy(["a"], ["a", "b"])


def test_bootstrap_ci_constant_and_reproducible():
    assert metrics.bootstrap_ci([1.0] * 10) == (1.0, 1.0, 1.0)
    a = metrics.bootstrap_ci([0, 1] * 20, seed=1)
    assert a == metrics.bootstrap_ci([0, 1] * 20, seed=1)
    mean, low, high = a
    # mean 0.5, n=40: the bootstrap sd of the mean is 0.5/sqrt(40) = 0.079, so the 95% interval is ~±0.155
    assert mean == 0.5 and 0.30 < low < 0.40 and 0.60 < high < 0.70
    assert all(math.isnan(x) for x in metrics.bootstrap_ci([]))


def test_win_rate_ties_half_and_failures_excluded():
    w = metrics.win_rate(["win", "win", "tie", "loss", "failed", "failed"], n_resamples=200)
    assert w["win_rate"] == pytest.approx((2 + 0.5) / 4)
    assert (w["n"], w["wins"], w["ties"], w["losses"], w["failed"]) == (4, 2, 1, 1, 2)
    assert math.isnan(metrics.win_rate(["failed"])["win_rate"])  # all failed: no win rate, never a win
    with pytest.raises(ValueError):
        metrics.win_rate(["victory"])


def test_combine_orders_cancels_position_bias():
    assert metrics.combine_orders("win", "win") == "win"
    assert metrics.combine_orders("win", "loss") == "tie"  # A won only when shown first
    assert metrics.combine_orders("win", "tie") == "win"
    assert metrics.combine_orders("loss", "tie") == "loss"
    assert metrics.combine_orders("win", "failed") == "failed"


def test_bands_from_value_shares():
    counts = {"domain": {"Code": 90, "Legal": 6, "Medical": 4}, "task": {}}
    bands = metrics.value_bands(counts, tail_fraction=0.05)
    assert bands == {"domain": {"Code": "head", "Legal": "head", "Medical": "tail"}, "task": {}}
    assert metrics.band_of(0.05, 0.05) == "head" and metrics.band_of(0.0499, 0.05) == "tail"
    assert metrics.value_bands({"d": {"a": 9, "b": 1}}, tail_fraction=0.2) == {"d": {"a": "head", "b": "tail"}}


def test_grouped_rate():
    g = metrics.grouped_rate(["a", "b", "a"], [True, False, False])
    assert (g["a"].k, g["a"].n, g["b"].k, g["b"].n) == (1, 2, 0, 1)


def test_heldout_split_fraction_and_stability():
    ids = [f"x:{i}" for i in range(4000)]
    held = [i for i in ids if is_heldout(i, seed=0, fraction=0.1)]
    assert 320 < len(held) < 480
    assert held == [i for i in ids if is_heldout(i, seed=0, fraction=0.1)]
    assert set(held) <= {i for i in ids if is_heldout(i, seed=0, fraction=0.2)}  # nested as the fraction grows
    with pytest.raises(ValueError):
        is_heldout("x", 0, 1.5)
