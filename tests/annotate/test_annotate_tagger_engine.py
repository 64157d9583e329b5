"""The transformers tagger engine on a real (random-weight, tiny) Llama: the cached prefix gives the same
label log-probs as the full prompt, the prefix runs once per category, calibration uses the content-free prior."""

import pytest
from treasure.annotate.tagger import (
    CONTENT_FREE,
    build_prompt,
    content_free_prior,
    pick_label,
)


@pytest.fixture(scope="module")
def tiny_engine(tiny_checkpoint):
    from treasure.annotate.tagger_engines import TransformersTagger

    return TransformersTagger(str(tiny_checkpoint), calibration="content_free", score_norm="mean", score_end=True)


def full_prompt_logprobs(engine, prompt, text):
    """Reference without any cache reuse: each label (and the end token) scored on the whole prompt."""
    import torch

    full = engine._render(prompt.messages(text))
    n = len(engine._ids(full))
    out = []
    for choice in prompt.choices:
        ids = engine._ids(full + choice) + [engine.end_id]
        with torch.no_grad():
            logp = torch.log_softmax(engine.model(torch.tensor([ids])).logits[0], -1)
        per_token = [float(logp[i - 1, ids[i]]) for i in range(n, len(ids))]
        out.append((sum(per_token[:-1]), len(per_token) - 1, per_token[-1]))
    return out


def test_annotate_engine_prefix_cache_matches_full_prompt(tiny_engine, taxonomy):
    p = build_prompt(taxonomy, "task", definitions=False)
    texts = ["Translate 'good morning' into German.", "Write a haiku about the sea."]
    cached = tiny_engine.label_logprobs(p, texts)
    for text, got in zip(texts, cached):
        for (a, n, e), (ra, rn, re_) in zip(got, full_prompt_logprobs(tiny_engine, p, text)):
            assert n == rn and a == pytest.approx(ra, abs=1e-2) and e == pytest.approx(re_, abs=1e-2)  # float32 noise only
    n_prefix = tiny_engine._prefix[f"task@{p.version}"][0]
    assert tiny_engine.tokens_run["prefix"] == n_prefix  # the shared prefix ran once for both rows


def test_annotate_engine_calibrated_answer(tiny_engine, taxonomy):
    p = build_prompt(taxonomy, "domain", few_shot=False)
    text = "How do I sort a dict by value in Python?"
    prior = content_free_prior(tiny_engine.label_logprobs(p, list(CONTENT_FREE)), "mean", end=True)
    best, conf = pick_label(tiny_engine.label_logprobs(p, [text])[0], "mean", True, prior)
    label, got_conf = tiny_engine.answer(p, [text], "score")[0]
    assert label == p.choices[best] and got_conf == pytest.approx(conf)
    raw, none = tiny_engine.answer(p, [text], "generate")[0]
    assert isinstance(raw, str) and none is None
