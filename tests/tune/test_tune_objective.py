"""The objective on hand-computed metrics: weighted scalar, directions, Pareto front, best trial."""

import math

import pytest

from treasure.tune.objective import (ObjectiveError, ObjectiveSpec, ObjectiveTerm, best_index, metric_value,
                                     pareto_front, scalar, term_values)

ACC = ObjectiveTerm(metric="marker_inference.tail.accuracy", mode="max", weight=2.0)
VIOL = ObjectiveTerm(metric="length.fixed.violation_rate", mode="min", weight=1.0)
LOSS = ObjectiveTerm(metric="heldout.tail.loss", mode="min", weight=0.5)


def metrics(acc, viol, loss=3.0):
    return {"marker_inference": {"tail": {"accuracy": acc}}, "length": {"fixed": {"violation_rate": viol}},
            "heldout.tail.loss": loss}


def test_scalar_by_hand():
    # 2 * 0.40 - 1 * 0.25 - 0.5 * 3.0 = 0.80 - 0.25 - 1.50 = -0.95
    assert scalar(metrics(0.40, 0.25), [ACC, VIOL, LOSS]) == pytest.approx(-0.95)
    # one term, mode min: the value turned negative
    assert scalar(metrics(0.4, 0.1), [VIOL]) == pytest.approx(-0.1)
    assert term_values(metrics(0.4, 0.1), [ACC, VIOL]) == {"marker_inference.tail.accuracy": 0.4,
                                                           "length.fixed.violation_rate": 0.1}


def test_nested_and_flat_names_agree():
    assert metric_value({"a": {"b": 1}}, "a.b") == 1.0
    assert metric_value({"a.b": 2}, "a.b") == 2.0


def test_nan_propagates_and_missing_metric_names_what_was_reported():
    assert math.isnan(scalar(metrics(math.nan, 0.1), [ACC, VIOL]))
    with pytest.raises(ObjectiveError, match=r"'win_rate.tail' was not reported; reported metrics: \['heldout.tail.loss'"):
        scalar(metrics(0.1, 0.1), [ObjectiveTerm(metric="win_rate.tail", mode="max")])
    with pytest.raises(ObjectiveError, match="not a number"):
        metric_value({"x": "high"}, "x")
    with pytest.raises(ObjectiveError, match="not a number"):
        metric_value({"x": True}, "x")


def test_pareto_front_by_hand():
    rows = [metrics(0.5, 0.30),   # 0: best accuracy
            metrics(0.4, 0.10),   # 1: best violation
            metrics(0.4, 0.30),   # 2: dominated by 0 and by 1
            metrics(0.45, 0.20),  # 3: trade-off, not dominated
            metrics(math.nan, 0.0)]  # 4: not measured: left out
    assert pareto_front(rows, [ACC, VIOL]) == [0, 1, 3]


def test_best_index_weighted_and_pareto():
    rows = [metrics(0.5, 0.25), metrics(0.375, 0.0), metrics(0.4375, 0.125)]
    # scalars (exact in binary): 2*.5-.25 = 2*.375-0 = 2*.4375-.125 = .75 → a tie: the first wins (reproducible)
    spec = ObjectiveSpec(terms=[ACC, VIOL])
    assert best_index(rows, spec) == 0
    rows.append(metrics(0.625, 0.25))  # 1.0: the best, and on the front
    assert best_index(rows, spec) == 3
    assert best_index(rows, ObjectiveSpec(combine="pareto", terms=[ACC, VIOL])) == 3
    assert best_index([metrics(math.nan, 0.1)], spec) is None


def test_spec_validation():
    with pytest.raises(ValueError, match="names a metric twice"):
        ObjectiveSpec(terms=[ACC, ACC])
    with pytest.raises(ValueError):
        ObjectiveTerm(metric="x", mode="max", weight=0)
    spec = ObjectiveSpec(terms=[ACC])
    assert spec.effective_round_terms() == [ACC]


def evaluation_metrics():
    """An evaluation's metrics.json, shaped by the evaluate stage's own helpers, with known counts."""
    from treasure.evaluate.metrics import wilson, win_rate

    def wins(k, n):  # k wins and n - k losses against the baseline
        return win_rate(["win"] * k + ["loss"] * (n - k), n_resamples=20)

    return {
        "inference": {"bands": {
            "domain": {"tail": wilson(3, 10).as_dict(), "head": wilson(8, 10).as_dict()},
            "task": {"tail": wilson(1, 6).as_dict(), "head": wilson(12, 14).as_dict()},
            "format": {"head": wilson(5, 5).as_dict()},  # no tail value held out: adds nothing to the tail pool
        }},
        "length_control": {"conditions": {"marked_instruction": wilson(9, 20).as_dict(),
                                          "marked_marker": wilson(4, 20).as_dict()}},
        "win_rates": {"marked_inferred": {"bands": {"domain": {"tail": wins(3, 4), "head": wins(1, 8)},
                                                    "task": {"tail": wins(0, 0), "head": wins(2, 2)}}}},
    }


def test_longtail_metrics_by_hand():
    from treasure.tune.longtail import longtail_metrics

    m = longtail_metrics(evaluation_metrics())
    assert m["longtail.inference.accuracy"] == pytest.approx((3 + 1) / (10 + 6))  # pooled hits / rows: 0.25
    assert m["longtail.inference.head_accuracy"] == pytest.approx((8 + 12 + 5) / (10 + 14 + 5))
    assert m["longtail.length.violation_rate"] == pytest.approx(4 / 20)  # marked_marker only
    assert m["longtail.win_rate"] == pytest.approx(3 / 4)  # task's tail judged nothing: weight 0
    empty = longtail_metrics({"inference": {"bands": {"domain": {"head": {"k": 1, "n": 2}}}}})
    assert all(math.isnan(empty[k]) for k in ("longtail.inference.accuracy", "longtail.length.violation_rate",
                                              "longtail.win_rate"))  # nothing measured is NaN, never 0


def test_trial_report_objective_by_hand():
    """The chain a real last round runs: evaluation + held-out loss → longtail metrics → report → objective."""
    from treasure.tune.longtail import longtail_metrics
    from treasure.tune.trial import build_report

    spec = ObjectiveSpec(
        terms=[ObjectiveTerm(metric="longtail.inference.accuracy", mode="max", weight=1.0),
               ObjectiveTerm(metric="longtail.length.violation_rate", mode="min", weight=0.5),
               ObjectiveTerm(metric="heldout.tail.loss", mode="min", weight=0.1)],
        round_terms=[ObjectiveTerm(metric="heldout.tail.loss", mode="min")])
    metrics = {"heldout": {"loss": 3.1, "tail": {"loss": 4.0, "rows": 12}}, **longtail_metrics(evaluation_metrics())}
    first = build_report({"heldout": {"tail": {"loss": 4.5}}}, spec, 1, 2)
    assert first["round_objective"] == pytest.approx(-4.5) and math.isnan(first["objective"])
    last = build_report(metrics, spec, 2, 2)
    # 1.0 * 0.25 - 0.5 * 0.20 - 0.1 * 4.0 = 0.25 - 0.10 - 0.40 = -0.25
    assert last["objective"] == pytest.approx(-0.25) and last["round_objective"] == pytest.approx(-4.0)
    assert last["longtail.inference.accuracy"] == pytest.approx(0.25) and last["heldout.tail.loss"] == 4.0
