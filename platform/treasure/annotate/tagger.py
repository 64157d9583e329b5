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

import math
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


def build_prompt(taxonomy, category: str, version: str = "v1", *, definitions: bool = True, few_shot: bool = True) -> CategoryPrompt:
    """The category's prompt from the taxonomy's definitions and the prompt file's wording.

    `definitions=False` lists the class names only (no descriptions); `few_shot=False` drops the
    examples. Both are measured variants (docs/annotation.md); the defaults are the paper's shape.
    """
    spec = load_prompt_file(version)
    cat = taxonomy.category(category)
    if cat.kind != "enum":
        raise ValueError(f"the tagger answers enum categories only; {category!r} is {cat.kind}")
    labels = [v.value for v in cat.values]
    classes = "\n".join((f"{v.value}: {v.description or v.value}" if definitions else v.value)
                         for v in cat.values if v.value != UNSPECIFIED)
    shots = spec.get("few_shot", {}).get(category, []) if few_shot else []
    for s in shots:
        if s["label"] not in labels and s["label"] != UNSPECIFIED:
            raise ValueError(f"prompt {version}: few-shot label {s['label']!r} is not a {category} value")
    examples = "".join(f"Text: {s['text']}\nAnswer: {s['label']}\n\n" for s in shots)
    instruction = spec["instruction"].format(category=category, description=cat.description, definitions=classes)
    user_prefix = instruction + "\n\n" + (f"Examples:\n\n{examples}" if examples else "") + "Now the example to classify.\n"
    others = [lab for lab in labels if lab != UNSPECIFIED]
    rule = spec["answer_rule"].format(labels=", ".join(others))
    fields = tuple(spec.get("text_fields", {}).get(category, ["prompt"]))
    variant = version + ("" if definitions else "+names") + ("" if few_shot else "+0shot")  # recorded in provenance
    return CategoryPrompt(category, variant, spec["system"], user_prefix, rule, tuple(labels), fields)


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


# --- score mode: ranking the allowed labels by likelihood (pure; the engine supplies log-probs) ---

# Content-free inputs of contextual calibration (Zhao et al. 2021, "Calibrate before use").
CONTENT_FREE = ("N/A", "", "[MASK]")


def label_scores(raw: list[tuple[float, int, float]], norm: str = "sum", end: bool = False) -> list[float]:
    """One score per label from the engine's (summed token log-prob, token count, end-token log-prob).

    `end=True` adds the log-prob of the end-of-answer token after the label, so a label that is
    only the start of a longer answer ("Social" of "SocialSciences") is not favoured.
    `norm="mean"` divides by the token count (length-normalized); `"sum"` keeps the total.

    >>> label_scores([(-2.0, 2, -1.0), (-1.0, 1, -3.0)], "mean", end=True)
    [-1.0, -2.0]
    """
    if norm not in ("sum", "mean"):
        raise ValueError(f"score_norm must be sum or mean, not {norm!r}")
    out = []
    for logp, n, end_logp in raw:
        total, count = logp + (end_logp if end else 0.0), n + (1 if end else 0)
        out.append(total / max(count, 1) if norm == "mean" else total)
    return out


def log_normalize(scores: list[float]) -> list[float]:
    """log softmax over the labels."""
    top = max(scores)
    z = top + math.log(sum(math.exp(s - top) for s in scores))
    return [s - z for s in scores]


def content_free_prior(raws: list[list[tuple[float, int, float]]], norm: str = "sum", end: bool = False) -> list[float]:
    """log p_cf(label): the label distribution on content-free inputs, averaged in probability space."""
    probs = [[math.exp(v) for v in log_normalize(label_scores(r, norm, end))] for r in raws]
    return [math.log(sum(col) / len(col)) for col in zip(*probs)]


def pick_label(raw: list[tuple[float, int, float]], norm: str = "sum", end: bool = False,
               prior: list[float] | None = None) -> tuple[int, float]:
    """(index of the best label, its softmax confidence); with `prior`, contextual calibration.

    Calibration divides each label's probability by its content-free probability (subtracts
    log p_cf), which removes the model's a-priori preference for some label names.

    >>> pick_label([(-1.0, 1, 0.0), (-2.0, 1, 0.0)])[0]
    0
    >>> pick_label([(-1.0, 1, 0.0), (-2.0, 1, 0.0)], prior=[-0.1, -3.0])[0]
    1
    """
    scores = log_normalize(label_scores(raw, norm, end))
    if prior is not None:
        scores = [s - p for s, p in zip(scores, prior)]
    probs = [math.exp(v) for v in log_normalize(scores)]
    best = max(range(len(probs)), key=probs.__getitem__)
    return best, probs[best]
