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


def length_markers(texts: list[str], language: str | None, bucket_category=None) -> list[dict[str, int | str]]:
    """length_tokens / length_sentences / length_paragraphs (+ length_bucket) for texts of one language.

    `bucket_category` is the taxonomy's `length_bucket` category (its thresholds apply to
    length_tokens); pass None to skip the bucket.
    """
    out = []
    for doc, text in zip(pipeline(language).pipe(texts, batch_size=256), texts):
        words = sum(1 for t in doc if not (t.is_space or t.is_punct))
        row: dict[str, int | str] = {
            "length_tokens": words,
            "length_sentences": sum(1 for s in doc.sents if s.text.strip()),
            "length_paragraphs": count_paragraphs(text),
        }
        if bucket_category is not None:
            row["length_bucket"] = bucket_category.bucket_of(words)
        out.append(row)
    return out
