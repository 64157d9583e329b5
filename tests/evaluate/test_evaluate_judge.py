"""Judges: verdict parsing, both orders, malformed answers as failures, the HTTP judge over real HTTP."""

from __future__ import annotations

import pytest

from treasure.evaluate.judge import HttpJudge, JudgeConfig, outcome_for_first, parse_verdict, score_outcome


def test_parse_verdict_only_one_clear_verdict():
    assert parse_verdict("blah [[A]]") == "A"
    assert parse_verdict("[[ B ]]") == "B"
    assert parse_verdict("tie: [[C]]") == "C"
    assert parse_verdict("[[A]] and [[A]] again") == "A"
    for bad in ("", None, "A is better", "[[A]] or [[B]]", "[A]", "[[D]]"):
        assert parse_verdict(bad) is None


def test_outcome_for_first_maps_orders():
    assert outcome_for_first("A", True) == "win" and outcome_for_first("A", False) == "loss"
    assert outcome_for_first("B", False) == "win" and outcome_for_first("C", True) == "tie"
    assert outcome_for_first(None, True) == "failed"


def test_score_outcome_margin_and_empty_answers():
    assert score_outcome(-1.0, -1.2, 0.1) == "win" and score_outcome(-1.2, -1.0, 0.1) == "loss"
    assert score_outcome(-1.0, -1.05, 0.1) == "tie" and score_outcome(None, None, 0.1) == "tie"
    assert score_outcome(-5.0, None, 0.1) == "win"


def test_http_judge_both_orders_and_failures(judge_server, monkeypatch):
    monkeypatch.setenv("TEST_JUDGE_KEY", "sk-test-123")
    judge = HttpJudge(JudgeConfig(type="http", model="stub-judge", base_url=judge_server.url, api_key_env="TEST_JUDGE_KEY", max_retries=1))
    prompts = ["Q1", "Q2", "Q3 MALFORMED", "Q4 CONFLICT", "Q5 BADJSON", "Q6 SERVERERROR", "Q7 POSITION", "Q8"]
    a = ["GOOD answer", "meh", "GOOD", "GOOD", "GOOD", "GOOD", "x", "same"]
    b = ["meh", "GOOD answer", "meh", "meh", "meh", "meh", "y", "same"]
    before = len(judge_server.seen)
    got = judge.judge(prompts, a, b)
    outcomes = [j.outcome for j in got]
    assert outcomes == ["win", "loss", "failed", "failed", "failed", "failed", "tie", "tie"]
    # Both orders really were asked: candidate first, then second.
    assert (got[0].first, got[0].second) == ("win", "win")
    assert (got[6].first, got[6].second) == ("win", "loss")  # position bias cancels to a tie
    assert got[2].raw_first.startswith("Reasoning. Both answers")  # the malformed answer is kept
    assert got[5].raw_first.startswith("ERROR: HTTP 500")
    seen = judge_server.seen[before:]
    assert all(s["path"] == "/v1/chat/completions" and s["auth"] == "Bearer sk-test-123" for s in seen)
    assert all(s["body"]["model"] == "stub-judge" for s in seen)
    assert len(seen) == 2 * len(prompts) + 2 * 1  # the two 500s were retried once each


def test_http_judge_unreachable_is_failure():
    judge = HttpJudge(JudgeConfig(type="http", base_url="http://127.0.0.1:9/v1", max_retries=0, timeout_s=2))
    assert [j.outcome for j in judge.judge(["q"], ["a"], ["b"])] == ["failed"]


def test_likelihood_scorer_batched_equals_one_by_one(tiny_checkpoint):
    import torch

    from treasure.evaluate.judge import LikelihoodScorer

    scorer = LikelihoodScorer(JudgeConfig(type="likelihood", model=str(tiny_checkpoint), batch_size=3))
    prompts, answers = ["Hi", "Tell me about cats, please.", "Hi"], ["Hello there!", "Cats purr.", ""]
    batched = scorer.scores(prompts, answers)
    assert batched[2] is None  # empty answer: no score
    tok, model = scorer.engine.tokenizer, scorer.engine.model
    for p, a, got in zip(prompts[:2], answers[:2], batched[:2]):
        head = tok(scorer.engine.chat_text(p), add_special_tokens=False)["input_ids"]
        body = tok(a, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([head + body])).logits[0].float(), dim=-1)
        expected = sum(float(logp[len(head) - 1 + i, t]) for i, t in enumerate(body)) / len(body)
        assert got == pytest.approx(expected, abs=1e-4)
    js = scorer.judge(prompts, answers, ["Hello there!", "", "x"])
    assert [j.outcome for j in js] == ["tie", "win", "loss"]  # same answer ties; empty loses
