"""Language identification with py3langid, whose model ships inside the package (no download).

>>> identify("The quick brown fox jumps over the lazy dog.")[0]
'English'
"""

from __future__ import annotations

from functools import lru_cache

MODEL = "py3langid-0.4.0"
# ISO 639-1 → the taxonomy's language names; codes outside the taxonomy give no marker.
ISO_NAMES = {
    "en": "English", "fr": "French", "es": "Spanish", "it": "Italian", "de": "German", "pt": "Portuguese",
    "ja": "Japanese", "ko": "Korean", "ar": "Arabic", "zh": "Chinese", "ru": "Russian", "pl": "Polish",
    "tr": "Turkish", "vi": "Vietnamese", "nl": "Dutch", "cs": "Czech", "id": "Indonesian", "uk": "Ukrainian",
    "ro": "Romanian", "el": "Greek", "hi": "Hindi", "he": "Hebrew", "fa": "Persian",
}


@lru_cache(maxsize=1)
def _identifier():
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def identify(text: str) -> tuple[str | None, float]:
    """(taxonomy language name or None, normalized probability)."""
    code, prob = _identifier().classify(text)
    return ISO_NAMES.get(code), float(prob)
