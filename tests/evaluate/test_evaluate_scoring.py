"""Request building and scoring of each measurement, on hand-made rows (no model)."""

from __future__ import annotations

import json

import pytest

from treasure.evaluate import adherence, inference, length_control, winrate
from treasure.evaluate.config import LengthControlConfig
from treasure.evaluate.examples import AnnotatedRow
from treasure.taxonomy import load_taxonomy
from treasure.template import render_request, split_prompt


@pytest.fixture(scope="module")
def demo_tax(repo):
    return load_taxonomy(repo / "pipelines/configs/taxonomy_demo.yaml")


EX = [AnnotatedRow("e1", "Say hi <TEMPLATE>", "hi", {"domain": "Conversation", "language": "English"}),
      AnnotatedRow("e2", "Explain gravity.", "...", {"domain": "Sciences", "task": "Explanation"})]


def test_length_control_requests_four_conditions(demo_tax):
    reqs = length_control.requests(EX, LengthControlConfig(prompts=2), demo_tax)
    assert [r["condition"] for r in reqs["baseline"]] == ["baseline_instruction"] * 2
    assert [r["limit"] for r in reqs["baseline"]] == [29, 79]  # demo buckets: concise < 30, medium < 80
    assert [r["condition"] for r in reqs["marked"][:3]] == ["marked_instruction", "marked_marker", "marked_marker_copy"]
    inst, fixed, copy = reqs["marked"][:3]
    assert inst["user_turn"].endswith("Answer in at most 29 words.") and "<TEMPLATE>" not in inst["user_turn"].replace("‹TEMPLATE>", "")
    assert inst["prefix"] == "" and reqs["baseline"][0]["prefix"] == ""
    text, markers = split_prompt(fixed["user_turn"], demo_tax)
    assert markers == {"length_bucket": "concise"} and "at most" not in text
    assert "<TEMPLATE>" not in text  # user text that mimics a tag is neutralized
    # Prefill (the default) opens the model's block with the fixed marker; the copy condition sends the same prompt, no prefix.
    assert fixed["prefix"] == "<TEMPLATE><length_bucket>concise</length_bucket"
    assert copy["user_turn"] == fixed["user_turn"] and copy["prefix"] == ""
    with pytest.raises(ValueError, match="leave length_control.limits empty"):
        length_control.limits(LengthControlConfig(limits=[10]), demo_tax)
    assert length_control.limits(LengthControlConfig(length_marker="length_tokens", limits=[10, 20]), demo_tax) == [(10, "10"), (20, "20")]
    assert length_control.limits(LengthControlConfig(bucket_values=["concise"]), demo_tax) == [(29, "concise")]
    with pytest.raises(ValueError, match="not bounded buckets"):
        length_control.limits(LengthControlConfig(bucket_values=["long"]), demo_tax)


def test_length_control_copy_condition_switch(demo_tax):
    conditions = lambda reqs: {r["condition"] for r in reqs["marked"]}  # noqa: E731
    assert "marked_marker_copy" not in conditions(length_control.requests(EX, LengthControlConfig(copy_condition=False), demo_tax))
    # Without prefill marked_marker is copy-only itself: no second, identical condition.
    no_prefill = length_control.requests(EX, LengthControlConfig(), demo_tax, prefill=False)
    assert conditions(no_prefill) == {"marked_instruction", "marked_marker"}
    assert all(r["prefix"] == "" for r in no_prefill["marked"])


@pytest.mark.parametrize("prefill", [True, False])
def test_serving_and_evaluation_share_the_prefill_rendering(demo_tax, prefill):
    """Every marked request is what serving sends for the same prompt and markers: (user turn, prefix) alike."""
    from treasure.serving.prompting import request_for_prompt

    def served(prompt, markers, with_prefill=prefill):
        got = render_request(prompt, markers, demo_tax, prefill=with_prefill)
        assert got == request_for_prompt(prompt, markers, demo_tax, with_prefill)
        return got

    lc = length_control.requests(EX, LengthControlConfig(bucket_values=["concise"]), demo_tax, prefill=prefill)["marked"]
    for r in lc:
        if r["condition"] == "marked_marker":
            assert (r["user_turn"], r["prefix"]) == served(r["prompt"], {"length_bucket": "concise"})
        if r["condition"] == "marked_marker_copy":
            assert (r["user_turn"], r["prefix"]) == served(r["prompt"], {"length_bucket": "concise"}, with_prefill=False)
    adh = adherence.requests({"language": EX, "length_bucket": EX[:1]}, {"language": ["Spanish"], "length_bucket": ["long"]},
                             demo_tax, prefill=prefill)
    assert len(adh) == 3
    for r in adh:
        assert (r["user_turn"], r["prefix"]) == served(r["prompt"], {r["category"]: r["requested"]})
        assert bool(r["prefix"]) == prefill
    for r in winrate.quality_requests(EX, {}, demo_tax, prefill=prefill):
        assert (r["user_turn"], r["prefix"]) == served(r["prompt"], {"quality_bucket": "1"})
    for r in inference.requests(EX, demo_tax):
        assert (r["user_turn"], r["prefix"]) == served(r["prompt"], {}) and r["prefix"] == ""


def test_length_control_draws_prompts_whose_reference_breaks_the_limit(demo_tax):
    rows = [AnnotatedRow(f"e{n}", "q", "a", {"length_tokens": str(n)}) for n in (3, 29, 30, 300)] + [AnnotatedRow("none", "q", "a", {})]
    cfg = LengthControlConfig(bucket_values=["concise"])  # N = 29
    assert [e.id for e in length_control.eligible(rows, cfg, demo_tax)] == ["e30", "e300"]
    assert len(length_control.eligible(rows, cfg.model_copy(update={"prompts_over_limit": False}), demo_tax)) == 5
    with pytest.raises(ValueError, match="no held-out prompt has a reference answer longer than 29 words"):
        length_control.eligible(rows[:2], cfg, demo_tax)


def test_length_control_score_and_pairs():
    rows = [
        {"example_id": "a", "condition": "baseline_instruction", "limit": 10, "words": 12, "finish_reason": "stop", "prefix": ""},
        {"example_id": "b", "condition": "baseline_instruction", "limit": 10, "words": 5, "finish_reason": "stop", "prefix": ""},
        {"example_id": "a", "condition": "marked_marker", "limit": 10, "words": 8, "finish_reason": "stop", "prefix": "<T"},
        {"example_id": "b", "condition": "marked_marker", "limit": 10, "words": 9, "finish_reason": "length", "prefix": "<T"},
        {"example_id": "a", "condition": "marked_marker_copy", "limit": 10, "words": 30, "finish_reason": "stop", "prefix": ""},
        {"example_id": "b", "condition": "marked_marker_copy", "limit": 10, "words": 4, "finish_reason": "stop", "prefix": ""},
    ]
    s = length_control.score(rows)
    assert list(s["conditions"]) == ["baseline_instruction", "marked_marker", "marked_marker_copy"]
    assert s["conditions"]["baseline_instruction"]["rate"] == 0.5 and s["conditions"]["marked_marker"]["rate"] == 0.0
    assert s["conditions"]["marked_marker"]["truncated"] == 1 and s["by_limit"]["10"]["baseline_instruction"]["k"] == 1
    copy = s["conditions"]["marked_marker_copy"]
    assert (copy["k"], copy["n"], copy["mean_words"], copy["prefilled"]) == (1, 2, 17.0, 0)
    assert s["conditions"]["marked_marker"]["prefilled"] == 2
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
    assert s["majority"] == {}  # no training counts given: no floor to show
    with_floor = inference.score(rows, ["domain"], bands, {"domain": {"Legal": 90, "Medical": 10}})
    assert with_floor["majority"]["domain"]["value"] == "Legal"
    assert (with_floor["majority"]["domain"]["k"], with_floor["majority"]["domain"]["n"]) == (2, 3)  # "Legal" always: 2 of 3


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
    reqs = adherence.requests({"language": EX}, {"language": ["English", "Spanish"]}, demo_tax)
    assert len(reqs) == 4 and split_prompt(reqs[1]["user_turn"], demo_tax)[1] == {"language": "English"}
    assert reqs[1]["prefix"] == "<TEMPLATE><language>English</language"
    rows = [{"category": "language", "requested": "English", "observed": "English"},
            {"category": "language", "requested": "Spanish", "observed": "English"},
            {"category": "language", "requested": "Spanish", "observed": "Spanish"}]
    s = adherence.score(rows, {"language": {"English": "head", "Spanish": "tail"}})
    assert s["categories"]["language"]["k"] == 2 and s["values"]["language"]["Spanish"]["rate"] == 0.5
    assert s["bands"]["language"]["head"]["rate"] == 1.0
    assert "mean_words" not in s["values"]["language"]["English"] and s["length_separation"] == {}


def test_adherence_length_prompts_are_over_the_concise_limit(demo_tax):
    rows = [AnnotatedRow(f"e{n}", "q", "a", {"length_tokens": str(n)}) for n in (3, 29, 30, 300)] + [AnnotatedRow("none", "q", "a", {})]
    assert [e.id for e in adherence.length_eligible(rows, demo_tax)] == ["e30", "e300"]  # demo: concise < 30 words
    with pytest.raises(ValueError, match="longer than 29 words"):
        adherence.length_eligible(rows[:2], demo_tax)


def _length_rows(words: dict[str, list[int]], observed: dict[str, list[str]]) -> list[dict]:
    return [{"category": "length_bucket", "requested": v, "observed": o, "words": w}
            for v in words for w, o in zip(words[v], observed[v])]


ORDER = {"length_bucket": ["concise", "medium", "long"]}


def test_adherence_length_bucket_mean_words_and_separation():
    rows = _length_rows({"concise": [10, 30], "medium": [50, 70, 90], "long": [200, 40]},
                        {"concise": ["concise", "concise"], "medium": ["medium", "medium", "medium"], "long": ["long", "concise"]})
    s = adherence.score(rows, {}, ORDER)
    per = s["values"]["length_bucket"]
    assert {v: (r["n"], r["mean_words"]) for v, r in per.items()} == {"concise": (2, 20.0), "medium": (3, 70.0), "long": (2, 120.0)}
    assert per["long"]["k"] == 1
    sep = s["length_separation"]["length_bucket"]
    assert sep["monotonic"] is True and sep["long_over_concise"] == 6.0 and sep["passed"] is True
    assert sep["mean_words"] == {"concise": 20.0, "medium": 70.0, "long": 120.0}


def test_adherence_length_separation_fails_when_flat_or_unordered():
    flat = adherence.score(_length_rows({"concise": [40], "medium": [50], "long": [60]}, {v: [v] for v in ORDER["length_bucket"]}), {}, ORDER)
    sep = flat["length_separation"]["length_bucket"]
    assert sep["monotonic"] is True and sep["long_over_concise"] == 1.5 and sep["passed"] is False  # grows, but not 3x
    unordered = adherence.score(_length_rows({"concise": [10], "medium": [90], "long": [60]}, {v: [v] for v in ORDER["length_bucket"]}), {}, ORDER)
    sep = unordered["length_separation"]["length_bucket"]
    assert sep["monotonic"] is False and sep["long_over_concise"] == 6.0 and sep["passed"] is False  # medium > long
    missing = adherence.score(_length_rows({"concise": [10], "long": [60]}, {"concise": ["concise"], "long": ["long"]}), {}, ORDER)
    sep = missing["length_separation"]["length_bucket"]
    assert (sep["monotonic"], sep["long_over_concise"], sep["passed"]) == (None, None, None)
    assert sep["mean_words"] == {"concise": 10.0, "medium": None, "long": 60.0}


class _PrefixEngine:
    """Stands in for treasure.models.engine: continues each prefix with the rest of a block and an answer."""

    def __init__(self):
        self.prefixes = None

    def generate(self, user_turns, params, prefixes=None):
        from treasure.models.engine import Generation

        self.prefixes = prefixes
        return [Generation(f"{p}><language>English</language></TEMPLATE>\nHello there.", 3, 7, "stop") for p in prefixes]


def test_generation_passes_prefixes_and_parses_the_prefilled_block(taxonomy):
    from treasure.models.engine import SamplingParams
    from treasure.evaluate.generation import run_requests

    turn, prefix = render_request("Say hi.", {"length_bucket": "concise"}, taxonomy)
    engine = _PrefixEngine()
    rows = run_requests(engine, [{"request_id": "a", "user_turn": turn, "prefix": prefix}, {"request_id": "b", "user_turn": "Hi"}],
                        SamplingParams(), taxonomy, marked=True)
    assert engine.prefixes == [prefix, ""]  # a row without a prefix column has none
    assert rows[0]["raw"].startswith(prefix) and rows[0]["block_ok"] and rows[0]["answer"] == "Hello there."
    assert json.loads(rows[0]["inferred"]) == {"length_bucket": "concise", "language": "English"}
    assert not rows[1]["block_ok"]  # '><language>...' without its opening is no block
