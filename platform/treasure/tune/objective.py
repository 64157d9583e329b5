"""The search objective: a metrics dict in, objective value(s) out. Pure, no Ray, no MLflow.

A trial's metrics are a flat dict (``{"marker_inference.tail.accuracy": 0.41, ...}``; nested dicts
are flattened with dots). An objective is a list of terms, each naming one metric, whether more
(``max``) or less (``min``) of it is better, and a weight. The scalar objective is always
maximized:

    objective = sum(weight * (value if mode == "max" else -value) for each term)

>>> spec = ObjectiveSpec(terms=[
...     ObjectiveTerm(metric="tail.accuracy", mode="max", weight=1.0),
...     ObjectiveTerm(metric="length.violation_rate", mode="min", weight=0.5)])
>>> scalar({"tail": {"accuracy": 0.6}, "length": {"violation_rate": 0.2}}, spec.terms)
0.5

With ``combine: pareto`` the searcher (Optuna) optimizes the term metrics jointly; the trial that
is registered as "best" is then the Pareto-front trial with the highest scalar objective (with
positive weights, the scalar's maximum always lies on the front).
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, model_validator

from treasure.config import StrictModel, flatten


class ObjectiveError(ValueError):
    """A metric the objective needs is missing or not a number."""


class ObjectiveTerm(StrictModel):
    """One metric of the objective and which direction is better."""

    metric: str = Field(description="Metric name as reported by the trial (flattened with dots), e.g. 'marker_inference.tail.accuracy'.")
    mode: Literal["max", "min"] = Field(description="'max' if a higher value is better, 'min' if lower is better.")
    weight: float = Field(1.0, gt=0.0, description="Weight of this term in the scalar objective (positive; direction comes from mode).")


class ObjectiveSpec(StrictModel):
    """What the search optimizes: final terms (after evaluation) and round terms (for early stopping)."""

    combine: Literal["weighted", "pareto"] = Field(
        "weighted", description="'weighted': the searcher maximizes the scalar objective; 'pareto': the searcher optimizes every term (multi-objective, needs searcher.type=optuna)."
    )
    terms: list[ObjectiveTerm] = Field(min_length=1, description="Terms of the final objective, computed from the evaluation suite's metrics after the last round.")
    round_terms: list[ObjectiveTerm] = Field(
        default_factory=list,
        description="Terms of the per-round objective ('round_objective'), computed from cheap metrics reported after every training round; the early-stopping scheduler compares trials on it. Empty: the final terms are computed every round.",
    )

    @model_validator(mode="after")
    def _distinct(self) -> "ObjectiveSpec":
        for name, terms in (("terms", self.terms), ("round_terms", self.round_terms)):
            metrics = [t.metric for t in terms]
            dup = sorted({m for m in metrics if metrics.count(m) > 1})
            if dup:
                raise ValueError(f"objective.{name} names a metric twice: {dup}")
        return self

    def effective_round_terms(self) -> list[ObjectiveTerm]:
        return self.round_terms or self.terms


def metric_value(metrics: dict, name: str) -> float:
    """The value of metric `name` in a (possibly nested) metrics dict, as a float."""
    flat = flatten(metrics)
    if name not in flat:
        raise ObjectiveError(f"objective metric {name!r} was not reported; reported metrics: {sorted(flat)}")
    value = flat[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ObjectiveError(f"objective metric {name!r} is {value!r}, not a number")
    return float(value)


def signed(value: float, mode: str) -> float:
    """The value turned so that higher is always better."""
    return value if mode == "max" else -value


def scalar(metrics: dict, terms: list[ObjectiveTerm]) -> float:
    """The weighted scalar objective (maximized). NaN if any term's metric is NaN (not measurable)."""
    return sum(t.weight * signed(metric_value(metrics, t.metric), t.mode) for t in terms)


def term_values(metrics: dict, terms: list[ObjectiveTerm]) -> dict[str, float]:
    """{metric: value} for every term, in the term order (what a multi-objective searcher sees)."""
    return {t.metric: metric_value(metrics, t.metric) for t in terms}


def dominates(a: list[float], b: list[float]) -> bool:
    """True if point `a` is at least as good as `b` everywhere and better somewhere (both 'higher is better')."""
    return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))


def pareto_front(rows: list[dict], terms: list[ObjectiveTerm]) -> list[int]:
    """Indices of the rows (metrics dicts) not dominated by any other row; rows with NaN are left out."""
    points = {}
    for i, row in enumerate(rows):
        p = [signed(metric_value(row, t.metric), t.mode) for t in terms]
        if not any(math.isnan(x) for x in p):
            points[i] = p
    return [i for i, p in points.items() if not any(dominates(q, p) for j, q in points.items() if j != i)]


def best_index(rows: list[dict], spec: ObjectiveSpec) -> int | None:
    """Index of the best row: the highest scalar objective (on the Pareto front when combine=pareto)."""
    candidates = pareto_front(rows, spec.terms) if spec.combine == "pareto" else list(range(len(rows)))
    scored = [(scalar(rows[i], spec.terms), i) for i in candidates]
    scored = [(s, i) for s, i in scored if not math.isnan(s)]
    if not scored:
        return None
    # Ties go to the earlier trial so the choice is reproducible.
    return max(scored, key=lambda si: (si[0], -si[1]))[1]
