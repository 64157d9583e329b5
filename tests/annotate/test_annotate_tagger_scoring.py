"""Score-mode label ranking (pure): length normalization, end token, contextual calibration; prompt variants."""

import math

import pytest
from treasure.annotate.tagger import (
    CONTENT_FREE,
    UNSPECIFIED,
    build_prompt,
    content_free_prior,
    label_scores,
    log_normalize,
    pick_label,
)


def test_annotate_label_scores_sum_mean_end():
    raw = [(-3.0, 3, -0.5), (-1.5, 1, -4.0)]  # a long likely label, a short one that rarely ends the answer
    assert label_scores(raw, "sum") == [-3.0, -1.5]
    assert label_scores(raw, "mean") == [-1.0, -1.5]
    assert label_scores(raw, "sum", end=True) == [-3.5, -5.5]
    assert pick_label(raw, "sum")[0] == 1 and pick_label(raw, "mean")[0] == 0 and pick_label(raw, "sum", end=True)[0] == 0
    with pytest.raises(ValueError, match="score_norm"):
        label_scores(raw, "max")


def test_annotate_contextual_calibration_removes_label_prior():
    # The model prefers label 0 for every input, content-free ones included (the collapse we measured).
    cf = [[(-0.1, 1, 0.0), (-3.0, 1, 0.0), (-3.5, 1, 0.0)] for _ in CONTENT_FREE]
    prior = content_free_prior(cf)
    assert math.isclose(sum(math.exp(p) for p in prior), 1.0, rel_tol=1e-9)
    row_for_label_1 = [(-0.3, 1, 0.0), (-1.5, 1, 0.0), (-4.0, 1, 0.0)]  # label 1 far above its prior
    assert pick_label(row_for_label_1)[0] == 0
    best, conf = pick_label(row_for_label_1, prior=prior)
    assert best == 1 and 0 < conf <= 1
    # A uniform prior changes nothing.
    uniform = [math.log(1 / 3)] * 3
    assert pick_label(row_for_label_1, prior=uniform) == pick_label(row_for_label_1)
    assert math.isclose(sum(math.exp(v) for v in log_normalize([1.0, 2.0, 3.0])), 1.0)


def test_annotate_prompt_variants(taxonomy):
    full = build_prompt(taxonomy, "domain")
    names = build_prompt(taxonomy, "domain", definitions=False)
    bare = build_prompt(taxonomy, "domain", definitions=False, few_shot=False)
    assert "Math: Mathematics" in full.user_prefix and "Math: " not in names.user_prefix and "\nMath\n" in names.user_prefix
    assert "Answer: Code" in names.user_prefix and "Answer: Code" not in bare.user_prefix
    assert (full.version, names.version, bare.version) == ("v1", "v1+names", "v1+names+0shot")
    assert full.choices == bare.choices and full.choices[-1] == UNSPECIFIED
