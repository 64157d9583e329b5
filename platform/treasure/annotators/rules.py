"""Rule annotators for length: word tokens, sentences, paragraphs, and the length bucket.

Tokens and sentences come from spaCy's rule-based pipelines (``spacy.blank(lang)`` plus the
``sentencizer``): a real tokenizer per language with no model download. Languages whose blank
pipeline needs an extra segmenter we do not ship (Japanese, Korean, Thai, ...) fall back to the
multi-language pipeline ``xx``. Chinese uses spaCy's character segmenter.

>>> count_paragraphs("a\\n\\nb\\n \\nc")
3
"""

from __future__ import annotations

import re
from functools import lru_cache

# Taxonomy language name → spaCy language code (blank pipelines only).
SPACY_CODES = {
    "English": "en", "French": "fr", "Spanish": "es", "Italian": "it", "German": "de", "Portuguese": "pt",
    "Chinese": "zh", "Russian": "ru", "Polish": "pl", "Turkish": "tr", "Vietnamese": "vi", "Dutch": "nl",
    "Czech": "cs", "Indonesian": "id", "Ukrainian": "uk", "Romanian": "ro", "Greek": "el", "Hindi": "hi",
    "Hebrew": "he", "Persian": "fa", "Arabic": "ar",
}
BLANK_LINES = re.compile(r"\n[ \t]*\n")


@lru_cache(maxsize=32)
def pipeline(language: str | None):
    """The blank spaCy pipeline (tokenizer + sentencizer) for a taxonomy language name."""
    import spacy

    code = SPACY_CODES.get(language or "", "xx")
    try:
        nlp = spacy.blank(code)
    except Exception:  # a language whose tokenizer needs a package we do not ship (why: keep rows, use xx)
        nlp = spacy.blank("xx")
    if code == "zh":
        nlp.tokenizer.segmenter = "char"  # no pkuseg/jieba model download
    nlp.add_pipe("sentencizer")
    return nlp


def count_paragraphs(text: str) -> int:
    """Blocks of non-blank text separated by blank lines."""
    return sum(1 for block in BLANK_LINES.split(text) if block.strip())


def count_words_sentences(doc) -> tuple[int, int]:
    """(words, non-blank sentences) of a spaCy doc, read from its attribute arrays.

    Why arrays: iterating Token objects in Python was ~20% of the rule annotators' time.
    Words are tokens that are neither space nor punctuation; a sentence counts when it holds a
    token that is not whitespace (the same as `s.text.strip()` being non-empty).
    """
    from spacy.attrs import IS_PUNCT, IS_SPACE, SENT_START

    if len(doc) == 0:
        return 0, 0
    arr = doc.to_array([IS_SPACE, IS_PUNCT, SENT_START])
    space = arr[:, 0] == 1
    words = int((~space & (arr[:, 1] == 0)).sum())
    starts = arr[:, 2] == 1
    starts[0] = True  # the first token always opens a sentence
    sentence_of = starts.cumsum()
    return words, len(set(sentence_of[~space].tolist()))


def length_markers(texts: list[str], language: str | None, bucket_category=None) -> list[dict[str, int | str]]:
    """length_tokens / length_sentences / length_paragraphs (+ length_bucket) for texts of one language.

    `bucket_category` is the taxonomy's `length_bucket` category (its thresholds apply to
    length_tokens); pass None to skip the bucket.
    """
    out = []
    for doc, text in zip(pipeline(language).pipe(texts, batch_size=256), texts):
        words, sentences = count_words_sentences(doc)
        row: dict[str, int | str] = {
            "length_tokens": words,
            "length_sentences": sentences,
            "length_paragraphs": count_paragraphs(text),
        }
        if bucket_category is not None:
            row["length_bucket"] = bucket_category.bucket_of(words)
        out.append(row)
    return out
