"""LLM tagger, pure part: prompt building from the taxonomy + a versioned prompt file, answer parsing.

The prompt follows the paper: a definition per class, few-shot examples, "answer with one class
from this list", and an Unspecified fallback. It is split into a shared *prefix* (system turn,
definitions, few-shot; identical for every row of a category, so engines cache it once) and a
per-row *suffix* (the row's text and the answer rule). `parse_answer` is the only way an answer
reaches the data: anything outside the list becomes Unspecified with the raw answer kept.

>>> parse_answer(" code.\\n", ["Code", "Math"])
('Code', True)
>>> parse_answer("I think it is about cooking", ["Code", "Math"])
(None, False)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml

PROMPTS_DIR = Path(__file__).resolve().parents[1] / "prompts"
UNSPECIFIED = "Unspecified"
ROW_SLOT = "\x00ROW\x00"  # placeholder the chat template renders around; never in real text


@lru_cache(maxsize=8)
def load_prompt_file(version: str) -> dict:
    path = PROMPTS_DIR / f"tagger_{version}.yaml"
    if not path.exists():
        known = sorted(p.stem.removeprefix("tagger_") for p in PROMPTS_DIR.glob("tagger_*.yaml"))
        raise FileNotFoundError(f"tagger prompt version {version!r} not found in {PROMPTS_DIR} (known: {known})")
    return yaml.safe_load(path.read_text(encoding="utf-8"))


@dataclass(frozen=True)
class CategoryPrompt:
    """Everything an engine needs to tag one category: messages around a row slot, and the labels."""

    category: str
    version: str
    system: str
    user_prefix: str  # definitions + few-shot; shared by every row
    answer_rule: str  # after the row's text
    labels: tuple[str, ...]  # the taxonomy's values (Unspecified added by the engine's choice list)
    text_fields: tuple[str, ...]

    @property
    def choices(self) -> tuple[str, ...]:
        """What the model may answer: the labels plus Unspecified (once)."""
        return self.labels if UNSPECIFIED in self.labels else (*self.labels, UNSPECIFIED)

    def messages(self, text: str) -> list[dict[str, str]]:
        return [
            {"role": "system", "content": self.system},
            {"role": "user", "content": f"{self.user_prefix}Text: {text}\n{self.answer_rule}"},
        ]

    def split_chat(self, render) -> tuple[str, str]:
        """(shared prefix, suffix template) of the chat-rendered prompt; `render(messages) -> str`.

        The split is at the row slot, so prefix + row text + suffix == render(messages(row text)).
        """
        full = render(self.messages(ROW_SLOT))
        prefix, suffix = full.split(ROW_SLOT)
        return prefix, suffix


def build_prompt(taxonomy, category: str, version: str = "v1") -> CategoryPrompt:
    """The category's prompt from the taxonomy's definitions and the prompt file's wording."""
    spec = load_prompt_file(version)
    cat = taxonomy.category(category)
    if cat.kind != "enum":
        raise ValueError(f"the tagger answers enum categories only; {category!r} is {cat.kind}")
    labels = [v.value for v in cat.values]
    definitions = "\n".join(f"{v.value}: {v.description or v.value}" for v in cat.values if v.value != UNSPECIFIED)
    shots = spec.get("few_shot", {}).get(category, [])
    for s in shots:
        if s["label"] not in labels and s["label"] != UNSPECIFIED:
            raise ValueError(f"prompt {version}: few-shot label {s['label']!r} is not a {category} value")
    examples = "".join(f"Text: {s['text']}\nAnswer: {s['label']}\n\n" for s in shots)
    instruction = spec["instruction"].format(category=category, description=cat.description, definitions=definitions)
    user_prefix = instruction + "\n\n" + (f"Examples:\n\n{examples}" if examples else "") + "Now the example to classify.\n"
    others = [lab for lab in labels if lab != UNSPECIFIED]
    rule = spec["answer_rule"].format(labels=", ".join(others))
    fields = tuple(spec.get("text_fields", {}).get(category, ["prompt"]))
    return CategoryPrompt(category, version, spec["system"], user_prefix, rule, tuple(labels), fields)


def row_text(prompt: CategoryPrompt, row: dict, max_chars: int) -> str:
    """The part of a row the tagger reads for this category, truncated to `max_chars`."""
    parts = [str(row[f]) for f in prompt.text_fields if row.get(f)]
    text = "\n---\n".join(parts).replace(ROW_SLOT, " ")
    return text[:max_chars]


_NORMALIZE = re.compile(r"[^a-z0-9]+")


def _key(text: str) -> str:
    return _NORMALIZE.sub("", text.lower())


def parse_answer(raw: str, labels: list[str] | tuple[str, ...]) -> tuple[str | None, bool]:
    """(label, on_list): the allowed label the raw answer names, else (None, False).

    Accepted: the label alone (any case, surrounding punctuation/quotes, an 'Answer:' lead), or
    a first line naming exactly one label ("Code, because ..."). A line naming several labels
    is off the list. An explicit "Unspecified" returns (None, True): on the list, but no class.

    >>> parse_answer("Sciences, Technology, SocialSciences", ["Sciences", "Technology"])
    (None, False)
    """
    line = next((ln for ln in raw.strip().splitlines() if ln.strip()), "")
    line = re.sub(r"^\s*(answer|class|label)\s*[:：]\s*", "", line, flags=re.I)
    by_key = {_key(lab): lab for lab in labels}
    by_key.setdefault(_key(UNSPECIFIED), UNSPECIFIED)
    key = _key(line)
    named = {by_key[k] for k in (_key(w) for w in re.split(r"[\s,;/|]+", line)) if k in by_key}
    if key in by_key:
        hit = by_key[key]
    elif len(named) == 1:
        hit = named.pop()
    else:
        return None, False
    if hit == UNSPECIFIED:
        return (UNSPECIFIED if UNSPECIFIED in labels else None), True
    return hit, True


def outcome(category: str, labels: tuple[str, ...], raw: str, confidence: float | None, min_confidence: float) -> tuple[str | None, str | None]:
    """(marker value or None, note) for one tagger answer; never an off-list value.

    Domain has an `Unspecified` value, so an unusable answer becomes that value; categories
    without one (task, format) get no marker and a note in provenance.
    """
    label, on_list = parse_answer(raw, labels)
    note = None
    if not on_list:
        note = "unspecified: answer not in the class list"
    elif label is None or label == UNSPECIFIED:
        note = "unspecified: model answered Unspecified"
    elif confidence is not None and confidence < min_confidence:
        label, note = None, f"unspecified: confidence below {min_confidence}"
    if label is None and UNSPECIFIED in labels:
        return UNSPECIFIED, note
    return label, note
