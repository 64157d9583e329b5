"""Length variants: the same prompt with a shorter answer, so a length marker carries signal.

In the bundled corpus an answer's length is decided by the kind of prompt (mathematics and
chit-chat are always concise, Arena-Hard almost always long), so a model can predict length from
the prompt and has no reason to read a length marker. A variant is derived from a row whose
answer is longer than a word budget: its answer is the row's leading text cut at a sentence
boundary so that it holds at most `budget` words. The prompt and metadata are the parent's;
annotation then measures the variant's own length like any other row's, so every row is labelled
with its true length, whatever the budget said.

How a cut is made (`leading_text`): the answer is split into lines, each line into sentences
(spaCy's rule-based sentencizer, the same tokenizer that counts `length_tokens`); units are taken
in order while the words fit; a cut never ends inside a code fence, on a heading, or on a unit
that ends with ':' (it announces something the cut left out).

Ids: ``<parent id>#len<budget>`` (treasure.heldout.DERIVED_SEP): a variant is held out exactly when
its parent is, and evaluation never draws a variant, so no held-out prompt is ever trained on.

>>> leading_text("One two three. Four five six seven. Eight.", 5, "English")
'One two three.'
>>> leading_text("Intro:\\n```\\ncode here\\n```\\nDone.", 3, "English") is None
True
"""

from __future__ import annotations

import json
import re

from treasure.heldout import DERIVED_SEP

FENCE = "```"


def _units(text: str, language: str | None) -> list[tuple[int, int, int]]:
    """(start, end, words) of each sentence of each line of `text`, in order."""
    from treasure.annotators.rules import count_words_sentences, pipeline

    nlp = pipeline(language)
    out = []
    for line in re.finditer(r"[^\n]+", text):
        doc = nlp(line.group(0))
        for sent in doc.sents:
            words, _ = count_words_sentences(sent.as_doc())
            out.append((line.start() + sent.start_char, line.start() + sent.end_char, words))
    return out


def _acceptable_end(cut: str) -> bool:
    last_line = cut.rstrip().rsplit("\n", 1)[-1].strip()
    return (cut.count(FENCE) % 2 == 0 and not last_line.startswith("#") and not cut.rstrip().endswith(":")
            and not re.fullmatch(r"[-*\d.)\s]*", last_line))


def leading_text(text: str, budget: int, language: str | None) -> str | None:
    """The longest acceptable leading cut of `text` with at most `budget` words (None: no such cut,
    or the cut would be the whole text)."""
    total, best = 0, None
    for start, end, words in _units(text, language):
        total += words
        if total > budget:
            break
        cut = text[:end].rstrip()
        if _acceptable_end(cut):
            best = cut
    if best is None or best.strip() == text.strip():
        return None
    return best


def answer_words(row: dict) -> int:
    """Words of a row's response, counted as `length_tokens` is."""
    return sum(words for _, _, words in _units(row["response"], row.get("language")))


def derive(rows: list[dict], budgets: list[int], min_words: int, words_of) -> list[dict]:
    """Variant rows (same columns as `rows`) for every row and budget where a cut exists.

    `words_of(row)` is the parent's answer length in words; a budget only applies to answers
    longer than 1.5 × the budget (a variant should be clearly shorter than its parent).
    """
    out = []
    for row in rows:
        total = words_of(row)
        seen: set[str] = set()
        for budget in sorted(budgets):
            if total <= 1.5 * budget:
                continue
            cut = leading_text(row["response"], budget, row.get("language"))
            if cut is None or cut in seen or len(cut.split()) < min_words:
                continue
            seen.add(cut)
            meta = {**json.loads(row["metadata"]), "derived_from": row["id"],
                    "derivation": f"leading sentences within {budget} words"}
            out.append({**row, "id": f"{row['id']}{DERIVED_SEP}len{budget}", "response": cut,
                        "metadata": json.dumps(meta, ensure_ascii=False, sort_keys=True)})
    return out
