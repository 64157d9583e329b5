"""Held-out loss by frequency band: the cheap per-round signal early stopping compares trials on.

The loss is the mean completion-token cross-entropy (marker block + answer) on held-out rows with
the prompt block removed entirely, i.e. the model must *infer* the markers, as in the paper's
marker-inference test. Unlike the training loss (which falls when dropout is low, because the
prompt then hands the answer's block over), this loss rewards what dropout is meant to teach, so
trials with different dropout rates can be compared on it.

Rows are grouped by band (treasure.evaluate.metrics.value_bands over the training rows): ``tail``
holds the held-out rows with at least one marker value in the tail band among `categories` (a
value unseen in training counts as tail, as in the evaluation), ``head`` the others.

>>> from treasure.evaluate.examples import AnnotatedRow
>>> rows = [AnnotatedRow("a", "p", "r", {"domain": "Legal"}), AnnotatedRow("b", "p", "r", {"domain": "Code"})]
>>> {k: [e.id for e in v] for k, v in band_groups(rows, {"domain": {"Legal": "tail", "Code": "head"}}, ["domain"]).items()}
{'tail': ['a'], 'head': ['b']}
"""

from __future__ import annotations

import math
from pathlib import Path


def band_groups(rows: list, bands: dict[str, dict[str, str]], categories: list[str]) -> dict[str, list]:
    """{"tail": rows with a tail value in any of `categories`, "head": the rest}."""
    groups: dict[str, list] = {"tail": [], "head": []}
    for r in rows:
        tail = any(bands.get(c, {}).get(v, "tail") == "tail" for c, v in r.markers.items() if c in categories)
        groups["tail" if tail else "head"].append(r)
    return groups


def completion_loss(model, tokenizer, taxonomy, rows: list, *, max_length: int, batch_size: int = 16) -> tuple[float, int]:
    """(sum of completion-token losses, tokens) with no prompt markers; (0.0, 0) for no rows."""
    from treasure.dropout import DropoutConfig
    from treasure.chat_format import IGNORE_INDEX
    from treasure.models.loglik import continuation_logprobs
    from treasure.train.data_step import format_epoch

    # dataset_rate=1: every prompt block dropped, the completion block stays the target.
    data = format_epoch(rows, tokenizer, taxonomy, markers=True, dropout=DropoutConfig(dataset_rate=1.0, sample_rate=0.0),
                        seed=0, epoch=0, max_length=max_length)
    prompts, completions = [], []
    for ids, labels in zip(data.input_ids, data.labels):
        n = sum(1 for x in labels if x == IGNORE_INDEX)  # the prompt is labelled IGNORE_INDEX, the completion follows
        if n < len(ids):
            prompts.append(ids[:n])
            completions.append(ids[n:])
    logps = continuation_logprobs(model, prompts, completions, batch_size=batch_size)
    return -sum(logps), sum(len(c) for c in completions)


def heldout_loss(model_dir: str, *, input: str, heldout_seed: int, heldout_fraction: float, tail_fraction: float,
                 categories: list[str], max_rows: int, seed: int, max_length: int) -> dict:
    """{"heldout": {"loss", "tail": {"loss", "rows"}, "head": {...}}} for the checkpoint in `model_dir`."""
    import torch

    from treasure.evaluate.examples import read_annotated, sample, split, value_counts
    from treasure.evaluate.metrics import value_bands
    from treasure.models.causal_lm import load_causal_lm
    from treasure.models.checkpoint import TAXONOMY
    from treasure.taxonomy import load_taxonomy

    rows, _ = read_annotated(input)
    train, held = split(rows, heldout_seed, heldout_fraction)
    if not held:
        raise ValueError(f"no held-out rows in {input} at heldout_fraction={heldout_fraction}")
    bands = value_bands(value_counts(train), tail_fraction)
    groups = band_groups(sample(held, max_rows, seed, "heldout_loss"), bands, categories)
    model, tokenizer = load_causal_lm(str(model_dir), dtype=torch.float32)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    taxonomy = load_taxonomy(Path(model_dir) / TAXONOMY)
    out: dict = {}
    all_sum, all_tokens = 0.0, 0
    for band, group in groups.items():
        s, n = completion_loss(model, tokenizer, taxonomy, group, max_length=max_length)
        out[band] = {"loss": s / n if n else math.nan, "rows": len(group)}
        all_sum, all_tokens = all_sum + s, all_tokens + n
    out["loss"] = all_sum / all_tokens if all_tokens else math.nan
    return {"heldout": out}
