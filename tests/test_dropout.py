"""Dropout: deterministic per (seed, id, epoch), fresh per epoch, realized rates match config."""

import math

import pytest

from treasure.dropout import DropoutConfig, draw_prompt_markers

MARKERS = {"task": "Rewrite", "domain": "Legal", "language": "English", "length_bucket": "concise", "format": "JSON"}


def test_same_inputs_same_draw_new_epoch_new_draw():
    cfg = DropoutConfig(dataset_rate=0.3, sample_rate=0.5)
    a = [draw_prompt_markers(MARKERS, f"ex-{i}", epoch=0, seed=7, config=cfg) for i in range(200)]
    b = [draw_prompt_markers(MARKERS, f"ex-{i}", epoch=0, seed=7, config=cfg) for i in range(200)]
    c = [draw_prompt_markers(MARKERS, f"ex-{i}", epoch=1, seed=7, config=cfg) for i in range(200)]
    d = [draw_prompt_markers(MARKERS, f"ex-{i}", epoch=0, seed=8, config=cfg) for i in range(200)]
    assert a == b
    assert a != c and a != d
    assert all(list(x) == [k for k in MARKERS if k in x] for x in a)  # order kept


@pytest.mark.parametrize("dataset_rate, sample_rate", [(0.5, 0.5), (0.7, 0.5), (0.0, 0.5), (0.2, 0.0), (1.0, 0.3)])
def test_realized_rates_match_config(dataset_rate, sample_rate):
    n = 20_000
    cfg = DropoutConfig(dataset_rate=dataset_rate, sample_rate=sample_rate, category_rates={"language": 0.9})
    draws = [draw_prompt_markers(MARKERS, f"id{i}", epoch=3, seed=0, config=cfg) for i in range(n)]
    whole = sum(1 for d in draws if not d)
    # Empty blocks also arise by dropping every marker; subtract that expected share.
    p_all = sample_rate ** 4 * 0.9
    expected_empty = dataset_rate + (1 - dataset_rate) * p_all
    tol = lambda p, m: 4.5 * math.sqrt(max(p * (1 - p), 1e-9) / m) + 1e-9  # noqa: E731
    assert abs(whole / n - expected_empty) < tol(expected_empty, n)
    kept_rows = n - round(dataset_rate * n)
    for name in MARKERS:
        rate = 0.9 if name == "language" else sample_rate
        kept = sum(1 for d in draws if name in d)
        expected = (1 - dataset_rate) * (1 - rate)
        assert abs(kept / n - expected) < tol(expected, n), (name, kept / n, expected, kept_rows)


def test_config_rejects_bad_rates():
    with pytest.raises(ValueError):
        DropoutConfig(dataset_rate=1.5)
    with pytest.raises(ValueError):
        DropoutConfig(category_rates={"task": -0.1})
    with pytest.raises(ValueError):
        DropoutConfig(unknown_key=1)
