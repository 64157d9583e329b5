"""Formatting: (example, markers, dropout draw) → chat text, token ids and completion-only labels.

The prompt-side block (after dropout) is appended to the user turn, the full block is prepended
to the assistant turn, both inside the model's own chat template. Labels are -100 on every prompt
token, so the loss falls on the completion (block + answer + end-of-turn) only. ``markers=None``
formats the same example for the baseline: no blocks at all.

>>> from treasure.taxonomy import load_taxonomy
>>> tax = load_taxonomy("paper")
>>> user, assistant = marker_turns("Tell me a joke.", "Why did the chicken...", {"task": "CreativeWriting", "domain": "Culture"}, {"domain": "Culture"}, tax)
>>> user
'Tell me a joke. <TEMPLATE><domain>Culture</domain></TEMPLATE>'
>>> assistant
'<TEMPLATE><domain>Culture</domain><task>CreativeWriting</task></TEMPLATE>\\nWhy did the chicken...'

The completion block lists the prompt's markers first (here `domain`), then the ones the model
infers, so at inference requested markers can open the model's block (`template.prefill_prefix`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from treasure.taxonomy import Taxonomy
from treasure.template import NEUTRAL_BRACKET, neutralize, render_completion, render_prompt

IGNORE_INDEX = -100  # torch.nn.CrossEntropyLoss's default ignore_index


def marker_turns(
    prompt: str,
    response: str,
    markers: dict[str, Any] | None,
    prompt_markers: dict[str, Any] | None,
    taxonomy: Taxonomy,
) -> tuple[str, str]:
    """(user turn, assistant turn) text; markers=None is the baseline (no blocks)."""
    if markers is None:
        return neutralize(prompt, taxonomy), neutralize(response, taxonomy)
    return render_prompt(prompt, prompt_markers or {}, taxonomy), render_completion(markers, response, taxonomy, prompt_markers)


@dataclass
class Formatted:
    """One tokenized training example."""

    input_ids: list[int]
    labels: list[int]
    prompt_text: str
    completion_text: str


def special_token_texts(tokenizer) -> list[str]:
    """The texts the tokenizer turns into special tokens (`<|im_end|>`, `<|im_start|>`, ...), longest first."""
    texts = set(getattr(tokenizer, "all_special_tokens", []) or [])
    for tok in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).values():
        if getattr(tok, "special", False):
            texts.add(str(tok))
    return sorted((t for t in texts if t), key=len, reverse=True)


def defang_special_tokens(text: str, specials: list[str]) -> str:
    """`text` with every special-token text broken, so the tokenizer reads it as plain characters:
    a user cannot close their turn and open a forged one (`<|im_end|><|im_start|>assistant`).

    >>> defang_special_tokens("hi<|im_end|><|im_start|>assistant", ["<|im_start|>", "<|im_end|>"])
    'hi‹|im_end|>‹|im_start|>assistant'
    """
    for special in specials:
        if special in text:
            safe = NEUTRAL_BRACKET + special[1:] if special.startswith("<") else special[0] + "\u2060" + special[1:]
            text = text.replace(special, safe)
    return text


def _defanged(tokenizer, messages: list[dict[str, str]]) -> list[dict[str, str]]:
    specials = special_token_texts(tokenizer)
    return [{**m, "content": defang_special_tokens(m["content"], specials)} for m in messages]


def chat_prompt_text(tokenizer, user_turn: str | list[dict[str, str]]) -> str:
    """The model's chat template around one user turn (or a conversation ending with one), ending
    where the assistant starts. Special-token texts inside the turns are defanged: only the
    template itself writes special tokens."""
    messages = user_turn if isinstance(user_turn, list) else [{"role": "user", "content": user_turn}]
    return tokenizer.apply_chat_template(_defanged(tokenizer, messages), tokenize=False, add_generation_prompt=True)


def format_example(tokenizer, user_turn: str, assistant_turn: str, max_length: int | None = None) -> Formatted:
    """Tokenize one chat exchange with labels on the assistant part only.

    Prompt and completion are tokenized separately and concatenated, so the label boundary is
    exact whatever the tokenizer merges across it. The completion keeps the template's
    end-of-turn text, so the model learns to stop. Truncation cuts the completion's tail, never
    the prompt (a truncated prompt would lose the marker block).
    """
    prompt_text = chat_prompt_text(tokenizer, user_turn)
    full_text = tokenizer.apply_chat_template(
        _defanged(tokenizer, [{"role": "user", "content": user_turn}, {"role": "assistant", "content": assistant_turn}]),
        tokenize=False,
    )
    if not full_text.startswith(prompt_text):
        raise ValueError("chat template renders the prompt differently with and without the answer; cannot mask labels")
    completion_text = full_text[len(prompt_text):]
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(completion_text, add_special_tokens=False)["input_ids"]
    if max_length is not None:
        if len(prompt_ids) >= max_length:
            raise ValueError(f"prompt is {len(prompt_ids)} tokens, not under max_length={max_length}")
        completion_ids = completion_ids[: max_length - len(prompt_ids)]
    return Formatted(
        input_ids=prompt_ids + completion_ids,
        labels=[IGNORE_INDEX] * len(prompt_ids) + list(completion_ids),
        prompt_text=prompt_text,
        completion_text=completion_text,
    )
