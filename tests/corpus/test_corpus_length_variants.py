"""Length variants: shorter answers to the same prompts, labelled by their own length, held out with their parent."""

from __future__ import annotations

import json

from treasure.corpus.length_variants import answer_words, derive, leading_text
from treasure.heldout import is_derived, is_heldout

LONG = ("Rayleigh scattering makes the sky blue. Short wavelengths scatter far more than long ones. "
        "So blue light reaches us from every direction of the sky. At sunset the light crosses more air. "
        "Then most blue is scattered away before it arrives, and reds and oranges remain. ") * 4


def _row(i: int, response: str = LONG) -> dict:
    return {"id": f"src:{i:016x}", "prompt": f"Why is the sky blue? ({i})", "response": response, "source": "src",
            "language": "English", "metadata": json.dumps({"domain_hint": "Sciences"})}


def test_cut_is_at_a_sentence_boundary_within_budget():
    cut = leading_text(LONG, 20, "English")
    assert cut == "Rayleigh scattering makes the sky blue. Short wavelengths scatter far more than long ones."
    assert answer_words({"response": cut, "language": "English"}) <= 20
    assert leading_text("Short answer.", 20, "English") is None  # nothing to cut: no variant
    assert leading_text("Here is the code:\n```python\nprint(1)\n```", 6, "English") is None  # never ends on ':' or in a fence


def test_variants_per_budget_keep_prompt_and_metadata_and_are_labelled_by_lineage():
    rows = [_row(1), _row(2, "Blue. Because of scattering.")]
    out = derive(rows, [20, 60], min_words=3, words_of=answer_words)
    assert [r["id"] for r in out] == ["src:0000000000000001#len20", "src:0000000000000001#len60"]
    for r in out:
        assert r["prompt"] == rows[0]["prompt"] and r["source"] == "src"
        meta = json.loads(r["metadata"])
        assert meta["domain_hint"] == "Sciences" and meta["derived_from"] == rows[0]["id"]
        assert meta["derivation"].startswith("leading sentences within")
        assert LONG.startswith(r["response"]) and len(r["response"]) < len(LONG)
    assert answer_words(out[0]) <= 20 < answer_words(out[1]) <= 60


def test_variants_follow_their_parent_into_the_held_out_split():
    rows = [_row(i) for i in range(200)]
    out = derive(rows, [20], min_words=3, words_of=answer_words)
    assert len(out) == 200 and all(is_derived(r["id"]) for r in out)
    for parent, variant in zip(rows, out):
        assert is_heldout(variant["id"], 0, 0.3) == is_heldout(parent["id"], 0, 0.3)
    assert 20 < sum(is_heldout(r["id"], 0, 0.3) for r in rows) < 100


def test_evaluation_split_never_holds_a_variant():
    from treasure.evaluate.examples import AnnotatedRow, split

    rows = [AnnotatedRow(r["id"], r["prompt"], r["response"], {}) for r in [_row(i) for i in range(100)]]
    rows += [AnnotatedRow(f"{r.id}#len20", r.prompt, "cut", {}) for r in rows]
    train, held = split(rows, seed=0, fraction=0.3)
    assert held and not any(is_derived(r.id) for r in held)
    held_groups = {r.id for r in held}
    assert not any(r.id.split("#")[0] in held_groups for r in train)  # no held-out prompt in training, as a variant either
    assert len(train) + len(held) * 2 == len(rows)
