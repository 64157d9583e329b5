"""The report and MLflow metrics from a hand-made metrics dict; win rates only with a judge (no model)."""

from __future__ import annotations

import pytest

from treasure.evaluate import report, winrate
from treasure.evaluate.config import EvaluateConfig, WinRateConfig
from treasure.evaluate.examples import AnnotatedRow
from treasure.taxonomy import load_taxonomy


def _rate(k: int, n: int, **extra) -> dict:
    from treasure.evaluate.metrics import wilson

    return {**wilson(k, n).as_dict(), **extra}


def _metrics(**extra) -> dict:
    conditions = {"baseline_instruction": _rate(6, 10, truncated=0, mean_words=60.0, prefilled=0),
                  "marked_instruction": _rate(5, 10, truncated=1, mean_words=50.0, prefilled=0),
                  "marked_marker": _rate(1, 10, truncated=0, mean_words=30.0, prefilled=10),
                  "marked_marker_copy": _rate(3, 10, truncated=0, mean_words=41.5, prefilled=0)}
    per_value = {"concise": _rate(7, 8, mean_words=25.0), "medium": _rate(5, 8, mean_words=80.0), "long": _rate(4, 8, mean_words=150.0)}
    return {
        "models": {"baseline": "b", "marked": "m"}, "taxonomy_version": "demo@1", "judge": "none", "prefill": True,
        "data": {"input": "in", "rows": 100, "heldout_rows": 10, "heldout_used": 10, "train_rows": 90},
        "prompt_too_long": {"requests": 0, "examples": 0},
        "length_control": {"selection": "held-out prompts whose reference answer is longer than the limit",
                           "conditions": conditions, "by_limit": {"47": {c: _rate(r["k"], r["n"]) for c, r in conditions.items()}}},
        "adherence": {"categories": {"length_bucket": _rate(16, 24), "language": _rate(3, 4)},
                      "values": {"length_bucket": per_value, "language": {"English": _rate(3, 4)}},
                      "bands": {}, "length_bucket_selection": "held-out prompts whose reference answer is longer than the smallest bucket's limit",
                      "length_separation": {"length_bucket": {"order": ["concise", "medium", "long"], "min_ratio": 3.0,
                                                              "mean_words": {"concise": 25.0, "medium": 80.0, "long": 150.0},
                                                              "monotonic": True, "long_over_concise": 6.0, "passed": True}}},
        **extra,
    }


@pytest.mark.parametrize("judge_type", ["likelihood", "none"])
def test_win_rate_not_measured_without_a_judge(judge_type):
    reason = winrate.not_measured_reason(WinRateConfig(judge={"type": judge_type}))
    assert reason and "set win_rate.judge.type=http with a real judge" in reason and judge_type in reason
    md = report.markdown(_metrics(win_rates_not_measured=reason))
    section = md.split("## Win rate against the baseline")[1].split("##")[0]
    assert f"Not measured: {reason}." in section and "%" not in section
    assert not any(k.startswith("win_rate") for k in report.flat_metrics(_metrics(win_rates_not_measured=reason)))


def test_win_rate_measured_only_by_a_judge():
    assert winrate.not_measured_reason(WinRateConfig(judge={"type": "http"})) is None
    assert winrate.not_measured_reason(WinRateConfig(judge={"type": "local"})) is None
    assert winrate.not_measured_reason(WinRateConfig(prompts=0, judge={"type": "http"})) == "win_rate.prompts is 0"
    w = {"win_rate": 0.75, "low": 0.5, "high": 1.0, "n": 4, "wins": 3, "ties": 0, "losses": 1, "failed": 0}
    m = _metrics(win_rates={"marked_inferred": {"overall": w, "bands": {}}})
    assert report.flat_metrics(m)["win_rate.marked_inferred"] == 0.75
    assert "| marked_inferred | 75.0% [50.0%, 100.0%]" in report.markdown(m)
    assert "Not measured" not in report.markdown(m)


def test_report_absent_win_rates_from_older_metrics():
    md = report.markdown(_metrics())
    assert "Not measured: these metrics hold no win rates." in md


@pytest.mark.parametrize("judge_type", ["likelihood", "none"])
def test_plan_skips_win_rate_requests_without_a_judge(judge_type, repo):
    from treasure.evaluate.stage import plan

    tax = load_taxonomy("paper")  # every category in the block, quality_bucket too (quality-steered requests)
    held = [AnnotatedRow(f"e{i}", f"Question {i}?", "a", {"length_tokens": "2000", "language": "English"}) for i in range(6)]
    base = {"input": "in", "baseline": "b", "marked": "m", "output": "out",
            "length_control": {"prompts": 2, "bucket_values": ["concise"]},
            "categories": {"inference_prompts": 2, "adherence_prompts_per_value": 1, "adherence_categories": ["length_bucket"]}}
    judged = plan(EvaluateConfig(**base, win_rate={"prompts": 4, "judge": {"type": "http"}}), tax, held, {}, {})
    unjudged = plan(EvaluateConfig(**base, win_rate={"prompts": 4, "judge": {"type": judge_type}}), tax, held, {}, {})
    kinds = lambda rows: sorted({r["request_id"].split(":")[0] for r in rows})  # noqa: E731
    assert kinds(judged["baseline"]) == ["lc", "plain"] and "quality" in kinds(judged["marked"])
    assert kinds(unjudged["baseline"]) == ["lc"] and kinds(unjudged["marked"]) == ["adh", "lc", "plain"]
    assert len([r for r in unjudged["marked"] if r["request_id"].startswith("plain:")]) == 2  # inference prompts only


def test_report_length_control_four_conditions_and_length_bucket_per_value(tmp_path):
    m = _metrics(win_rates_not_measured="no judge")
    md = report.markdown(m)
    lc = md.split("## Length-instruction control")[1].split("\n## ")[0]
    for cond in ("baseline_instruction", "marked_instruction", "marked_marker", "marked_marker_copy"):
        assert f"| {cond} |" in lc
    assert "| marked_marker | yes | 10.0% [" in lc and "| 10 | 0 | 30.0 |" in lc
    assert "| marked_marker_copy | no | 30.0% [" in lc and "| 41.5 |" in lc
    per_value = md.split("### length_bucket adherence per value")[1].split("\n## ")[0]
    assert "| concise | 87.5% [" in per_value and "| 8 | 25.0 |" in per_value and "| long |" in per_value
    assert "Mean words strictly increasing (concise < medium < long): yes; long / concise = 6.00x (needs >= 3x): check passed." in per_value
    assert "### language adherence per value" not in md  # mean words only for length categories
    flat = report.flat_metrics(m)
    assert flat["length_control.marked_marker_copy.violation_rate"] == 0.3 and flat["length_control.marked_marker_copy.mean_words"] == 41.5
    assert flat["length_control.marked_marker.n"] == 10
    assert flat["adherence.length_bucket.concise.mean_words"] == 25.0 and flat["adherence.length_bucket.long.n"] == 8
    assert flat["adherence.length_bucket.monotonic"] == 1.0 and flat["adherence.length_bucket.long_over_concise"] == 6.0
    assert flat["adherence.length_bucket.length_check_passed"] == 1.0
    assert "adherence.language.English.mean_words" not in flat
    files = report.write(m, tmp_path)
    assert {f.name for f in files} == {"metrics.json", "report.md", "violation_by_condition.png", "accuracy_by_category.png", "head_vs_tail.png"}
    assert all(f.stat().st_size > 0 for f in files)


def test_separation_line_reports_a_failed_or_unmeasured_check():
    failed = {"order": ["concise", "medium", "long"], "monotonic": False, "long_over_concise": 1.2, "min_ratio": 3.0, "passed": False}
    assert report.separation_line(failed) == ("Mean words strictly increasing (concise < medium < long): no; "
                                              "long / concise = 1.20x (needs >= 3x): check failed.")
    unmeasured = {"order": ["concise", "long"], "monotonic": None, "long_over_concise": None, "min_ratio": 3.0, "passed": None}
    assert "not measured" in report.separation_line(unmeasured)
