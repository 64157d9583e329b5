"""Control adherence: fix one marker to a value, generate, re-annotate the answer, compare.

Re-annotation uses the annotation stage's own rule annotators (treasure.annotate: spaCy word
counts for length, py3langid for language, the format and code-fence detectors), so "the answer
carries the requested value" means exactly what it meant in the training data.
Every value of a category is asked on the same prompts, so values compare like for like.
"""

from __future__ import annotations

from treasure.evaluate import metrics
from treasure.evaluate.examples import Example
from treasure.taxonomy import Taxonomy
from treasure.template import render_prompt

REANNOTATED = ("length_bucket", "length_tokens", "length_sentences", "length_paragraphs", "language", "format", "code_type")


def reannotate(answer: str, category: str, language: str | None, taxonomy: Taxonomy) -> str | None:
    """The value the annotators give `answer` for `category` (None: no value, e.g. plain prose)."""
    if category.startswith("length_"):
        from treasure.annotate.rules import length_markers

        bucket = taxonomy.category("length_bucket") if "length_bucket" in taxonomy.names else None
        value = length_markers([answer], language or None, bucket)[0].get(category)
        return None if value is None else str(value)
    if category == "language":
        from treasure.annotate.langid import identify

        return identify(answer)[0] if answer.strip() else None
    if category == "format":
        from treasure.annotate.formats import detect_format

        return detect_format(answer)
    if category == "code_type":
        from treasure.annotate.formats import detect_code_type

        return detect_code_type(answer)
    raise ValueError(f"no rule annotator re-annotates {category!r}; adherence supports {', '.join(REANNOTATED)}")


def word_count(answer: str, language: str | None) -> int:
    """Words as annotation counts length_tokens."""
    from treasure.annotate.rules import length_markers

    return int(length_markers([answer], language or None, None)[0]["length_tokens"])


def values_to_test(category: str, taxonomy: Taxonomy, counts: dict[str, dict[str, int]], max_values: int) -> list[str]:
    """Bucket categories: every bucket; others: the most frequent values in the training data."""
    cat = taxonomy.category(category)
    if cat.kind == "bucket":
        return [b.value for b in cat.buckets]
    seen = list(counts.get(category, {}))  # most frequent first
    return seen[:max_values]


def requests(examples: list[Example], plan: dict[str, list[str]], taxonomy: Taxonomy) -> list[dict]:
    """One row per (category, value, example): only that marker is fixed."""
    rows = []
    for cat, values in plan.items():
        for value in values:
            for ex in examples:
                rows.append({"request_id": f"adh:{cat}:{value}:{ex.id}", "example_id": ex.id, "prompt": ex.prompt,
                             "category": cat, "requested": value, "language": ex.markers.get("language", ""),
                             "user_turn": render_prompt(ex.prompt, {cat: value}, taxonomy)})
    return rows


def score(rows: list[dict], bands: dict[str, dict[str, str]]) -> dict:
    """Adherence per category, per (category, value) and per band; rows carry `observed`."""
    out: dict = {"categories": {}, "values": {}, "bands": {}}
    for cat in dict.fromkeys(r["category"] for r in rows):
        sel = [r for r in rows if r["category"] == cat]
        requested, observed = [r["requested"] for r in sel], [r["observed"] for r in sel]
        out["categories"][cat] = metrics.adherence(observed, requested).as_dict()
        hits = [o == q for o, q in zip(observed, requested)]
        out["values"][cat] = {v: r.as_dict() for v, r in metrics.grouped_rate(requested, hits).items()}
        keys = [bands.get(cat, {}).get(q, "tail") for q in requested]
        out["bands"][cat] = {b: r.as_dict() for b, r in metrics.grouped_rate(keys, hits).items()}
    return out
