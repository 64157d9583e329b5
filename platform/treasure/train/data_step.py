"""The data step (pure, no Ray): annotated rows → per-epoch formatted, tokenized, padded batches.

Each epoch re-draws prompt-side marker dropout from (seed, example id, epoch) (treasure.dropout),
renders the turns (treasure.chat_format), tokenizes once for the whole epoch, and groups examples
of similar length into batches (less padding) in an order fixed by (seed, epoch). Resuming at
(epoch, batch index) therefore replays the very same batches and draws.

Examples are cut to `max_length` (the completion's tail goes); an example whose prompt alone
does not fit, or whose bare prompt (chat template and user text, no marker block: the same for the
baseline and the marked model) is longer than `max_prompt_length` tokens, is skipped and counted in
``EpochData.skipped``, never dropped silently. Why a prompt budget: a cut completion loses its
end-of-turn token, so a short answer behind a long prompt would teach "keep writing" under a
concise length marker; capping the prompt leaves room for every answer that should end.

>>> from treasure.taxonomy import load_taxonomy
>>> from treasure.dropout import DropoutConfig
>>> from treasure.train.tokenizer_bpe import train_bpe
>>> tax = load_taxonomy("paper")
>>> tok = train_bpe(["Say hi. hi there <TEMPLATE><domain>Culture</domain></TEMPLATE>"] * 10, vocab_size=300)
>>> rows = [{"id": "a", "prompt": "Say hi.", "response": "hi there", "markers": '{"domain": "Culture"}'}]
>>> examples = load_examples(rows, tax)
>>> epoch = format_epoch(examples, tok, tax, markers=True, dropout=DropoutConfig(dataset_rate=0.0, sample_rate=0.0),
...                      seed=0, epoch=0, max_length=64)
>>> tok.decode(epoch.input_ids[0])
'<|user|>\\nSay hi. <TEMPLATE><domain>Culture</domain></TEMPLATE>\\n<|assistant|>\\n<TEMPLATE><domain>Culture</domain></TEMPLATE>\\nhi there</s>'
>>> batch = collate([0], epoch, pad_id=tok.pad_token_id)
>>> batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
True
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any, Iterable

from treasure.dropout import DropoutConfig, draw_prompt_markers
from treasure.chat_format import IGNORE_INDEX, chat_prompt_text, format_example, marker_turns
from treasure.taxonomy import Taxonomy

# Batches are formed inside windows of this many batches sorted by length: less padding, still shuffled.
LENGTH_GROUP_WINDOW = 32


@dataclass(frozen=True)
class TrainingExample:
    """One annotated training pair with its validated markers."""

    id: str
    prompt: str
    response: str
    markers: dict[str, str]


def load_examples(rows: Iterable[dict[str, Any]], taxonomy: Taxonomy) -> list[TrainingExample]:
    """Parse annotated rows (``markers`` is a JSON string); sorted by id so every reader agrees on order."""
    out = []
    for row in rows:
        try:
            markers = taxonomy.validate_markers(json.loads(row["markers"] or "{}"))
        except (ValueError, TypeError) as e:
            raise ValueError(f"row {row['id']!r}: markers do not fit taxonomy {taxonomy.name!r}: {e}") from None
        out.append(TrainingExample(str(row["id"]), str(row["prompt"]), str(row["response"]), markers))
    return sorted(out, key=lambda e: e.id)


@dataclass
class EpochData:
    """One epoch of one shard, tokenized: parallel lists, plus the ids skipped for length."""

    ids: list[str] = field(default_factory=list)
    input_ids: list[list[int]] = field(default_factory=list)
    labels: list[list[int]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    truncated: int = 0


def format_epoch(
    examples: list[TrainingExample], tokenizer, taxonomy: Taxonomy, *, markers: bool, dropout: DropoutConfig,
    seed: int, epoch: int, max_length: int, max_prompt_length: int | None = None,
) -> EpochData:
    """Render, drop out and tokenize every example for `epoch` (markers=False: the baseline)."""
    data = EpochData()
    for ex in examples:
        if markers:
            kept = draw_prompt_markers(ex.markers, ex.id, epoch=epoch, seed=seed, config=dropout)
            user, assistant = marker_turns(ex.prompt, ex.response, ex.markers, kept, taxonomy)
        else:
            user, assistant = marker_turns(ex.prompt, ex.response, None, None, taxonomy)
        f = format_example(tokenizer, user, assistant)
        prompt_len = len(f.labels) - sum(1 for x in f.labels if x != IGNORE_INDEX)
        if prompt_len >= max_length or (max_prompt_length is not None and _bare_prompt_length(tokenizer, ex, taxonomy) > max_prompt_length):
            data.skipped.append(ex.id)
            continue
        if len(f.input_ids) > max_length:
            data.truncated += 1
        data.ids.append(ex.id)
        data.input_ids.append(f.input_ids[:max_length])
        data.labels.append(f.labels[:max_length])
    return data


def _bare_prompt_length(tokenizer, ex: TrainingExample, taxonomy: Taxonomy) -> int:
    user, _ = marker_turns(ex.prompt, ex.response, None, None, taxonomy)
    return len(tokenizer(chat_prompt_text(tokenizer, user), add_special_tokens=False)["input_ids"])


def batch_order(lengths: list[int], batch_size: int, *, seed: int, epoch: int) -> list[list[int]]:
    """Indices grouped into batches: shuffled by (seed, epoch), length-sorted within windows.

    >>> batch_order([5, 1, 4, 2], 2, seed=0, epoch=0)
    [[1, 3], [2, 0]]
    """
    rng = random.Random(f"{seed}:{epoch}")
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = batch_size * LENGTH_GROUP_WINDOW
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start:start + window], key=lambda i: lengths[i])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def collate(indices: list[int], data: EpochData, *, pad_id: int):
    """Right-padded tensors for one batch: input_ids, attention_mask, labels (-100 on prompt and pad)."""
    import torch

    width = max(len(data.input_ids[i]) for i in indices)
    ids = torch.full((len(indices), width), pad_id, dtype=torch.long)  # (B, T)
    labels = torch.full((len(indices), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(indices), width), dtype=torch.long)
    for row, i in enumerate(indices):
        n = len(data.input_ids[i])
        ids[row, :n] = torch.tensor(data.input_ids[i])
        labels[row, :n] = torch.tensor(data.labels[i])
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def completion_tokens(batch) -> int:
    """Tokens the loss is computed on (shifted labels that are not ignored)."""
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
