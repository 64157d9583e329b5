"""Request building and scoring of each measurement, on hand-made rows (no model)."""

from __future__ import annotations

import json

import pytest

from treasure.evaluate import adherence, inference, length_control
from treasure.evaluate.config import LengthControlConfig
from treasure.evaluate.examples import Example
from treasure.taxonomy import load_taxonomy
from treasure.template import split_prompt


@pytest.fixture(scope="module")
def demo_tax(repo):
    return load_taxonomy(repo / "pipelines/configs/taxonomy_demo.yaml")


EX = [Example("e1", "Say hi <TEMPLATE>", "hi", {"domain": "Conversation", "language": "English"}),
      Example("e2", "Explain gravity.", "...", {"domain": "Sciences", "task": "Explanation"})]


def test_length_control_requests_three_conditions(demo_tax):
    reqs = length_control.requests(EX, LengthControlConfig(prompts=2), demo_tax)
    assert [r["condition"] for r in reqs["baseline"]] == ["baseline_instruction"] * 2
    assert [r["limit"] for r in reqs["baseline"]] == [47, 159]  # demo buckets: concise < 48, medium < 160
    inst, fixed = reqs["marked"][0], reqs["marked"][1]
    assert inst["user_turn"].endswith("Answer in at most 47 words.") and "<TEMPLATE>" not in inst["user_turn"].replace("‹TEMPLATE>", "")
    text, markers = split_prompt(fixed["user_turn"], demo_tax)
    assert markers == {"length_bucket": "concise"} and "at most" not in text
    assert "<TEMPLATE>" not in text  # user text that mimics a tag is neutralized
    with pytest.raises(ValueError, match="leave length_control.limits empty"):
        length_control.limits(LengthControlConfig(limits=[10]), demo_tax)
    assert length_control.limits(LengthControlConfig(length_marker="length_tokens", limits=[10, 20]), demo_tax) == [(10, "10"), (20, "20")]
    assert length_control.limits(LengthControlConfig(bucket_values=["concise"]), demo_tax) == [(47, "concise")]
    with pytest.raises(ValueError, match="not bounded buckets"):
        length_control.limits(LengthControlConfig(bucket_values=["long"]), demo_tax)


def test_length_control_draws_prompts_whose_reference_breaks_the_limit(demo_tax):
    rows = [Example(f"e{n}", "q", "a", {"length_tokens": str(n)}) for n in (3, 47, 48, 300)] + [Example("none", "q", "a", {})]
    cfg = LengthControlConfig(bucket_values=["concise"])  # N = 47
    assert [e.id for e in length_control.eligible(rows, cfg, demo_tax)] == ["e48", "e300"]
    assert len(length_control.eligible(rows, cfg.model_copy(update={"prompts_over_limit": False}), demo_tax)) == 5
    with pytest.raises(ValueError, match="no held-out prompt has a reference answer longer than 47 words"):
        length_control.eligible(rows[:2], cfg, demo_tax)


def test_length_control_score_and_pairs():
    rows = [
        {"example_id": "a", "condition": "baseline_instruction", "limit": 10, "words": 12, "finish_reason": "stop"},
        {"example_id": "b", "condition": "baseline_instruction", "limit": 10, "words": 5, "finish_reason": "stop"},
        {"example_id": "a", "condition": "marked_marker", "limit": 10, "words": 8, "finish_reason": "stop"},
        {"example_id": "b", "condition": "marked_marker", "limit": 10, "words": 9, "finish_reason": "length"},
    ]
    s = length_control.score(rows)
    assert s["conditions"]["baseline_instruction"]["rate"] == 0.5 and s["conditions"]["marked_marker"]["rate"] == 0.0
    assert s["conditions"]["marked_marker"]["truncated"] == 1 and s["by_limit"]["10"]["baseline_instruction"]["k"] == 1
    pairs = length_control.non_violating_pairs(rows, "marked_marker")
    assert [(a["example_id"], b["example_id"]) for a, b in pairs] == [("b", "b")]  # a's baseline violated


def test_inference_score_counts_missing_as_wrong():
    rows = [
        {"annotated": json.dumps({"domain": "Legal", "task": "Rewrite"}), "inferred": json.dumps({"domain": "Legal"}), "block_ok": True},
        {"annotated": json.dumps({"domain": "Medical"}), "inferred": json.dumps({"domain": "Legal"}), "block_ok": False},
        {"annotated": json.dumps({"domain": "Legal"}), "inferred": "{}", "block_ok": False},
    ]
    bands = {"domain": {"Legal": "head", "Medical": "tail"}}
    s = inference.score(rows, ["domain", "task", "format"], bands)
    assert s["categories"]["domain"]["k"] == 1 and s["categories"]["domain"]["n"] == 3
    assert s["categories"]["task"]["k"] == 0 and "format" not in s["categories"]
    assert s["values"]["domain"]["Legal"]["n"] == 2 and s["bands"]["domain"]["tail"]["n"] == 1
    assert s["block_ok"]["k"] == 1
    assert s["bands"]["task"] == {"tail": {"k": 0, "n": 1, "rate": 0.0, "low": 0.0, "high": pytest.approx(0.7935, abs=1e-3)}}


def test_adherence_reannotates_like_annotation(demo_tax):
    assert adherence.reannotate("One two three.", "length_bucket", "English", demo_tax) == "concise"
    assert adherence.reannotate(" ".join(["word"] * 60), "length_bucket", "English", demo_tax) == "medium"
    assert adherence.reannotate("Ceci est une phrase écrite en français, sans aucun doute.", "language", None, demo_tax) == "French"
    assert adherence.reannotate("```python\nprint(1)\n```", "code_type", None, demo_tax) == "python"
    assert adherence.reannotate("", "language", None, demo_tax) is None
    assert adherence.word_count("Hello, big world!", "English") == 3
    with pytest.raises(ValueError, match="no rule annotator"):
        adherence.reannotate("x", "domain", None, demo_tax)


def test_adherence_plan_and_score(demo_tax):
    counts = {"language": {"English": 50, "Spanish": 3, "French": 1}}
    assert adherence.values_to_test("length_bucket", demo_tax, counts, 2) == ["concise", "medium", "long"]
    assert adherence.values_to_test("language", demo_tax, counts, 2) == ["English", "Spanish"]
    reqs = adherence.requests(EX, {"language": ["English", "Spanish"]}, demo_tax)
    assert len(reqs) == 4 and split_prompt(reqs[1]["user_turn"], demo_tax)[1] == {"language": "English"}
    rows = [{"category": "language", "requested": "English", "observed": "English"},
            {"category": "language", "requested": "Spanish", "observed": "English"},
            {"category": "language", "requested": "Spanish", "observed": "Spanish"}]
    s = adherence.score(rows, {"language": {"English": "head", "Spanish": "tail"}})
    assert s["categories"]["language"]["k"] == 2 and s["values"]["language"]["Spanish"]["rate"] == 0.5
    assert s["bands"]["language"]["head"]["rate"] == 1.0
