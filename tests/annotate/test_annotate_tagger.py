"""LLM tagger: prompt building, answer parsing, Unspecified outcomes; the real SmolLM2 engine (slow)."""

import pytest

from treasure.annotate.tagger import UNSPECIFIED, build_prompt, outcome, parse_answer


def test_annotate_prompt_has_definitions_fewshot_and_rule(taxonomy):
    p = build_prompt(taxonomy, "domain")
    assert "Math: Mathematics" in p.user_prefix and "Answer: Code" in p.user_prefix
    assert "Answer with one class from this list" in p.answer_rule and p.choices[-1] == UNSPECIFIED
    render = lambda msgs: "|".join(m["content"] for m in msgs)  # noqa: E731 - a stand-in chat template
    prefix, suffix = p.split_chat(render)
    assert prefix + "Row text" + suffix == render(p.messages("Row text"))
    with pytest.raises(ValueError, match="enum"):
        build_prompt(taxonomy, "length_tokens")


def test_annotate_parse_answer():
    labels = ["Code", "Math", "Unspecified"]
    assert parse_answer("Answer: math.", labels) == ("Math", True)
    assert parse_answer('"Code"', labels) == ("Code", True)
    assert parse_answer("Code, because it asks for a function", labels) == ("Code", True)
    assert parse_answer("Code or Math", labels) == (None, False)
    assert parse_answer("cooking", labels) == (None, False)
    assert parse_answer("", labels) == (None, False)


def test_annotate_off_list_answers_never_reach_markers(taxonomy):
    domain = build_prompt(taxonomy, "domain")
    task = build_prompt(taxonomy, "task")
    assert outcome("domain", domain.labels, "Cooking", None, 0.0) == (UNSPECIFIED, "unspecified: answer not in the class list")
    assert outcome("task", task.labels, "Cooking", None, 0.0) == (None, "unspecified: answer not in the class list")
    assert outcome("task", task.labels, "Unspecified", None, 0.0) == (None, "unspecified: model answered Unspecified")
    assert outcome("task", task.labels, "Translation", 0.2, 0.5)[0] is None
    assert outcome("task", task.labels, "Translation", 0.9, 0.5) == ("Translation", None)


@pytest.mark.slow  # loads the real SmolLM2 (minutes on a busy 2-core machine)
def test_annotate_prefix_cache_matches_full_prompt(taxonomy):
    import torch

    from treasure.annotate.tagger_engines import TransformersTagger
    from treasure.models.packaged import PACKAGED_SMOLLM2

    engine = TransformersTagger(PACKAGED_SMOLLM2)
    p = build_prompt(taxonomy, "domain")
    texts = ["How do I reverse a list in Python?", "What is the derivative of x^2?"]
    cached = engine.answer(p, texts, "score")
    for text, (label, conf) in zip(texts, cached):
        # Reference: score every label on the full prompt, no cache reuse.
        full = engine._render(p.messages(text))
        scores = []
        for choice in p.choices:
            ids = engine._ids(full + choice)
            n = len(engine._ids(full))
            with torch.no_grad():
                logp = torch.log_softmax(engine.model(torch.tensor([ids])).logits[0, n - 1:-1], -1)
            scores.append(float(sum(logp[i, t] for i, t in enumerate(ids[n:]))))
        assert p.choices[max(range(len(scores)), key=scores.__getitem__)] == label
    assert all(lab in p.choices for lab, _ in engine.answer(p, texts, "generate") if lab in p.choices)
