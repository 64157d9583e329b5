"""Quality scorers behind one interface, and quality_bucket (quartiles per language, 1 = best).

`Scorer.score(prompts, responses) -> list[float]` (higher is better). Engines:

- `reward_model`: any Hugging Face sequence-classification reward model (GPU in practice);
  the score is its logit for (prompt, response) rendered with the model's chat template.
- `lm_loglik`: mean token log-likelihood of the first `max_tokens` response tokens given the
  prompt under a causal LM (default: the packaged SmolLM2-135M-Instruct). A fluency /
  plausibility proxy, not a judgment of helpfulness or correctness. ~3 rows/s on 2 busy cores.
- `zipf` (the CPU demo default): mean Zipf log-probability of the response's SmolLM2 tokens,
  log p(t) = -log(rank(t) + 10) with rank = the token's id in SmolLM2's BPE vocabulary (merge
  order tracks corpus frequency). It is a *lexical typicality* score from the packaged model's
  tokenizer: high for common, plain wording; low for rare tokens, markup noise and mixed
  scripts. It does not read the prompt and knows nothing about correctness or helpfulness;
  it exists so the demo can bucket 10k rows in seconds. Use `reward_model` for real data.
"""

from __future__ import annotations

import math

import numpy as np

from treasure.models.packaged import PACKAGED_SMOLLM2

BUCKETS = ("1", "2", "3", "4")


class ZipfScorer:
    name = "zipf"

    def __init__(self, model: str = PACKAGED_SMOLLM2, max_tokens: int = 128):
        from transformers import AutoTokenizer

        from treasure.models.packaged import load_smollm2_tokenizer

        self.tokenizer = load_smollm2_tokenizer() if model == PACKAGED_SMOLLM2 else AutoTokenizer.from_pretrained(model)
        self.model_name = f"zipf-rank({'SmolLM2-135M-Instruct tokenizer' if model == PACKAGED_SMOLLM2 else model})"
        self.max_tokens = max_tokens

    def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        ids = self.tokenizer(responses, add_special_tokens=False)["input_ids"]
        return [-float(np.mean(np.log(np.asarray(t[: self.max_tokens]) + 10.0))) if t else -math.inf for t in ids]


class LMLoglikScorer:
    name = "lm_loglik"

    def __init__(self, model: str = PACKAGED_SMOLLM2, max_tokens: int = 128, batch_size: int = 8):
        from treasure.annotate.tagger_engines import model_name
        from treasure.models.causal_lm import load_causal_lm

        self.model, self.tokenizer = load_causal_lm(model)
        self.model_name = model_name(model)
        self.max_tokens, self.batch_size = max_tokens, batch_size

    def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        """Mean log-prob of the response's first `max_tokens` tokens after the prompt's last ones; -inf if empty."""
        from treasure.models.loglik import continuation_logprobs

        tok = self.tokenizer
        heads = [tok(tok.apply_chat_template([{"role": "user", "content": p[:2000]}], tokenize=False, add_generation_prompt=True),
                     add_special_tokens=False)["input_ids"][-self.max_tokens:] for p in prompts]
        bodies = [tok(r, add_special_tokens=False)["input_ids"][: self.max_tokens] for r in responses]
        rows = [i for i, b in enumerate(bodies) if b]
        means = continuation_logprobs(self.model, [heads[i] for i in rows], [bodies[i] for i in rows],
                                      batch_size=self.batch_size, mean=True)
        out = [-math.inf] * len(bodies)
        for i, m in zip(rows, means):
            out[i] = m
        return out


class RewardModelScorer:
    name = "reward_model"

    def __init__(self, model: str, max_tokens: int = 1024):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if model == PACKAGED_SMOLLM2:
            raise ValueError("quality.engine=reward_model needs quality.model: a local reward-model folder")
        self.torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = AutoModelForSequenceClassification.from_pretrained(model).to(self.device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.model_name = model
        self.max_tokens = max_tokens

    def _text(self, prompt: str, response: str) -> str:
        if self.tokenizer.chat_template:
            chat = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
            return self.tokenizer.apply_chat_template(chat, tokenize=False)
        return f"{prompt}\n\n{response}"

    def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        texts = [self._text(p, r) for p, r in zip(prompts, responses)]
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        batch = self.tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=self.max_tokens).to(self.device)
        with self.torch.no_grad():
            logits = self.model(**batch).logits
        return [float(x) for x in logits[:, 0].float().cpu()]


def load_scorer(engine: str, model: str, max_tokens: int):
    scorers = {"zipf": ZipfScorer, "lm_loglik": LMLoglikScorer, "reward_model": RewardModelScorer}
    if engine not in scorers:
        raise ValueError(f"unknown quality engine {engine!r} ({sorted(scorers)})")
    return scorers[engine](model, max_tokens)


def quality_buckets(languages: list[str | None], scores: list[float | None]) -> list[str | None]:
    """Quartile bucket per row within its language (None language = one group); 1 = best quarter.

    Thresholds are the language's 75th/50th/25th percentiles, so equal scores share a bucket.
    Rows without a score get None.

    >>> quality_buckets(["en"] * 4 + ["zh"], [4.0, 3.0, 2.0, 1.0, 0.0])
    ['1', '2', '3', '4', '1']
    """
    out: list[str | None] = [None] * len(scores)
    groups: dict[str | None, list[int]] = {}
    for i, (lang, s) in enumerate(zip(languages, scores)):
        if s is not None and math.isfinite(s):
            groups.setdefault(lang, []).append(i)
    for rows in groups.values():
        values = np.asarray([scores[i] for i in rows])
        q75, q50, q25 = np.quantile(values, [0.75, 0.5, 0.25])
        for i, v in zip(rows, values):
            out[i] = "1" if v >= q75 else "2" if v >= q50 else "3" if v >= q25 else "4"
    return out
