"""Control adherence: fix one marker to a value, generate, re-annotate the answer, compare.

Re-annotation uses the annotation stage's own rule annotators (treasure.annotate: spaCy word
counts for length, py3langid for language, the format and code-fence detectors), so "the answer
carries the requested value" means exactly what it meant in the training data.
Requests are rendered as serving renders them (treasure.template.render_request; with prefill the
fixed marker also opens the model's own block). Every value of a category is asked on the same
prompts, so values compare like for like. For length_bucket those prompts are held-out prompts
whose reference answer is longer than the smallest bucket's limit (`length_eligible`): on a prompt
whose natural answer is short, "concise" holds whatever the model does.

Length categories also report the mean words of the answers per requested value, and for a
bucket category whether they grow with the bucket (`length_separation`): strictly increasing in
bucket order, and the largest bucket's answers at least MIN_LONG_OVER_CONCISE times the smallest's.
"""

from __future__ import annotations

from treasure.evaluate import metrics
from treasure.evaluate.examples import AnnotatedRow
from treasure.taxonomy import Taxonomy
from treasure.template import render_request

REANNOTATED = ("length_bucket", "length_tokens", "length_sentences", "length_paragraphs", "language", "format", "code_type")
# Why 3: adjacent buckets of the shipped taxonomies are ~3x apart (demo 48/160 words, paper
# 300/1000), so a model that follows the buckets writes its longest answers at least 3x its shortest.
MIN_LONG_OVER_CONCISE = 3.0


def is_length(category: str) -> bool:
    """A category measured in words, sentences or paragraphs of the answer."""
    return category.startswith("length_")


def reannotate(answer: str, category: str, language: str | None, taxonomy: Taxonomy) -> str | None:
    """The value the annotators give `answer` for `category` (None: no value, e.g. plain prose)."""
    if category.startswith("length_"):
        from treasure.annotators.rules import length_markers

        bucket = taxonomy.category("length_bucket") if "length_bucket" in taxonomy.names else None
        value = length_markers([answer], language or None, bucket)[0].get(category)
        return None if value is None else str(value)
    if category == "language":
        from treasure.annotators.langid import identify

        return identify(answer)[0] if answer.strip() else None
    if category == "format":
        from treasure.annotators.response_format import detect_format

        return detect_format(answer)
    if category == "code_type":
        from treasure.annotators.response_format import detect_code_type

        return detect_code_type(answer)
    raise ValueError(f"no rule annotator re-annotates {category!r}; adherence supports {', '.join(REANNOTATED)}")


def word_count(answer: str, language: str | None) -> int:
    """Words as annotation counts length_tokens."""
    from treasure.annotators.rules import length_markers

    return int(length_markers([answer], language or None, None)[0]["length_tokens"])


def values_to_test(category: str, taxonomy: Taxonomy, counts: dict[str, dict[str, int]], max_values: int) -> list[str]:
    """Bucket categories: every bucket; others: the most frequent values in the training data."""
    cat = taxonomy.category(category)
    if cat.kind == "bucket":
        return [b.value for b in cat.buckets]
    seen = list(counts.get(category, {}))  # most frequent first
    return seen[:max_values]


def length_eligible(examples: list[AnnotatedRow], taxonomy: Taxonomy) -> list[AnnotatedRow]:
    """Held-out examples whose reference answer (annotated length_tokens) is longer than the smallest length bucket's limit.

    >>> from treasure.taxonomy import load_taxonomy
    >>> rows = [AnnotatedRow("a", "q", "r", {"length_tokens": "299"}), AnnotatedRow("b", "q", "r", {"length_tokens": "300"})]
    >>> [e.id for e in length_eligible(rows, load_taxonomy("paper"))]  # paper: concise is under 300 words
    ['b']
    """
    smallest = min(int(b.below) - 1 for b in taxonomy.category("length_bucket").buckets if b.below is not None)
    picked = [ex for ex in examples if int(ex.markers.get("length_tokens", 0)) > smallest]
    if examples and not picked:
        raise ValueError(f"adherence: no held-out prompt has a reference answer longer than {smallest} words (annotated "
                         "length_tokens); set categories.adherence_length_over_limit: false, or drop length_bucket from "
                         "categories.adherence_categories")
    return picked


def requests(examples: dict[str, list[AnnotatedRow]], plan: dict[str, list[str]], taxonomy: Taxonomy, *, prefill: bool = True) -> list[dict]:
    """One row per (category, value, example of that category): only that marker is fixed."""
    rows = []
    for cat, values in plan.items():
        for value in values:
            for ex in examples[cat]:
                user_turn, prefix = render_request(ex.prompt, {cat: value}, taxonomy, prefill=prefill)
                rows.append({"request_id": f"adh:{cat}:{value}:{ex.id}", "example_id": ex.id, "prompt": ex.prompt,
                             "category": cat, "requested": value, "language": ex.markers.get("language", ""),
                             "user_turn": user_turn, "prefix": prefix})
    return rows


def score(rows: list[dict], bands: dict[str, dict[str, str]], bucket_order: dict[str, list[str]] | None = None) -> dict:
    """Adherence per category, per (category, value) and per band; rows carry `observed`, length rows `words` too.

    Per value of a length category the entry also holds `mean_words`; a length category named in
    `bucket_order` (its bucket values, smallest first) gets `length_separation[category]`.
    """
    out: dict = {"categories": {}, "values": {}, "bands": {}, "length_separation": {}}
    for cat in dict.fromkeys(r["category"] for r in rows):
        sel = [r for r in rows if r["category"] == cat]
        requested, observed = [r["requested"] for r in sel], [r["observed"] for r in sel]
        out["categories"][cat] = metrics.adherence(observed, requested).as_dict()
        hits = [o == q for o, q in zip(observed, requested)]
        out["values"][cat] = {v: r.as_dict() for v, r in metrics.grouped_rate(requested, hits).items()}
        if is_length(cat):
            for v, words in mean_words(sel).items():
                out["values"][cat][v]["mean_words"] = words
            if cat in (bucket_order or {}):
                out["length_separation"][cat] = length_separation(out["values"][cat], bucket_order[cat])
        keys = [bands.get(cat, {}).get(q, "tail") for q in requested]
        out["bands"][cat] = {b: r.as_dict() for b, r in metrics.grouped_rate(keys, hits).items()}
    return out


def mean_words(rows: list[dict]) -> dict[str, float]:
    """{requested value: mean `words` of its answers}.

    >>> mean_words([{"requested": "concise", "words": 10}, {"requested": "concise", "words": 20}, {"requested": "long", "words": 90}])
    {'concise': 15.0, 'long': 90.0}
    """
    groups: dict[str, list[int]] = {}
    for r in rows:
        groups.setdefault(r["requested"], []).append(r["words"])
    return {v: sum(w) / len(w) for v, w in groups.items()}


def length_separation(per_value: dict[str, dict], order: list[str], min_ratio: float = MIN_LONG_OVER_CONCISE) -> dict:
    """Do answers grow with the requested bucket? From {value: {"mean_words", "n", ...}} and the buckets smallest first.

    `monotonic`: mean words strictly increase along `order` (every bucket measured);
    `long_over_concise`: the largest bucket's mean words over the smallest's (None when the smallest's is 0);
    `passed`: both, with the ratio at least `min_ratio`. A bucket without answers leaves all three None.

    >>> per = {"concise": {"mean_words": 20.0, "n": 8}, "medium": {"mean_words": 45.0, "n": 8}, "long": {"mean_words": 70.0, "n": 8}}
    >>> s = length_separation(per, ["concise", "medium", "long"])
    >>> s["monotonic"], s["long_over_concise"], s["passed"]
    (True, 3.5, True)
    """
    means = [per_value[v]["mean_words"] if per_value.get(v, {}).get("n") else None for v in order]
    out = {"order": list(order), "mean_words": dict(zip(order, means)), "min_ratio": min_ratio,
           "monotonic": None, "long_over_concise": None, "passed": None}
    if len(order) < 2 or any(m is None for m in means):
        return out
    out["monotonic"] = all(a < b for a, b in zip(means, means[1:]))
    out["long_over_concise"] = means[-1] / means[0] if means[0] > 0 else None
    ratio = out["long_over_concise"]
    # A smallest bucket of 0 words with longer answers above it still separates; the ratio is just unbounded.
    out["passed"] = out["monotonic"] and (ratio is None or ratio >= min_ratio)
    return out
