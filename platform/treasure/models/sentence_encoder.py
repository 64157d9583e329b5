"""Sentence embeddings on CPU: a BERT-style encoder, mean pooling over real tokens, L2 normalization.

This is what sentence-transformers does for all-MiniLM-L6-v2 (modules Transformer → Pooling(mean)
→ Normalize), written with transformers alone so the packaged model (`packaged:minilm`,
treasure.models.packaged) loads without the sentence-transformers package.

    enc = SentenceEncoder("packaged:minilm", max_tokens=128)
    enc.encode(["How do I sort a list?", "Tell me a joke"])   # (2, 384) float32, unit rows

`layers` picks which hidden states are pooled: "last" (the sentence-transformers embedding), "all" (the
input embeddings and every layer's output, each mean-pooled and L2-normalized, then concatenated: (N,
384 x 7) for MiniLM-L6), or a list of indices into the model's hidden states (0 = input embeddings).
The same forward pass computes every layer, so more layers cost only the pooling. Why: the last layer
of a sentence-similarity model keeps the topic and blurs what the prompt asks for (the verb, the
form); the lower layers keep it, and a linear head on all of them measured +5 points on the task
category of the hand-labelled set (docs/annotation.md).

Throughput: texts are sorted by length and batched so padding stays small; bf16 weights on CPUs with
native bf16 (AMX / avx512_bf16), float32 elsewhere (`dtype="auto"`).
"""

from __future__ import annotations

import numpy as np

from treasure.models.packaged import PACKAGED_MINILM, minilm_dir


def resolve_encoder(model: str) -> str:
    """The local folder of `model` ('packaged:minilm' or a folder)."""
    return str(minilm_dir()) if model == PACKAGED_MINILM else model


def resolve_dtype(dtype: str) -> str:
    """'bfloat16' or 'float32'; auto = bfloat16 where the CPU multiplies bf16 natively."""
    if dtype != "auto":
        return dtype
    from treasure.train.model_build import cpu_has_bf16

    return "bfloat16" if cpu_has_bf16() else "float32"


def mean_pool(hidden, mask):
    """Mean of `hidden` (B, T, H) over the positions where `mask` (B, T) is 1, then L2-normalized.

    >>> import torch
    >>> h = torch.tensor([[[3.0, 4.0], [100.0, 0.0]]]); m = torch.tensor([[1, 0]])
    >>> mean_pool(h, m).tolist()
    [[0.6000000238418579, 0.800000011920929]]
    """
    import torch

    m = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)  # (B, H)
    return torch.nn.functional.normalize(pooled.float(), p=2, dim=1)


def resolve_layers(layers: str | list[int], n_layers: int) -> list[int]:
    """Indices into a model's `n_layers + 1` hidden states (0 = the input embeddings) for a `layers` setting.

    >>> resolve_layers("last", 6), resolve_layers("all", 6), resolve_layers([0, -1], 6)
    ([6], [0, 1, 2, 3, 4, 5, 6], [0, 6])
    >>> resolve_layers([7], 6)
    Traceback (most recent call last):
    ValueError: layers [7]: this encoder has hidden states 0..6 (0 = input embeddings; negative counts from the last)
    """
    if layers == "last":
        return [n_layers]
    if layers == "all":
        return list(range(n_layers + 1))
    if isinstance(layers, str) or not layers or any(not -(n_layers + 1) <= i <= n_layers for i in layers):
        raise ValueError(f"layers {layers!r}: this encoder has hidden states 0..{n_layers} (0 = input embeddings; "
                         "negative counts from the last)")
    return [i % (n_layers + 1) for i in layers]


class SentenceEncoder:
    """A sentence encoder loaded once; `encode(texts)` → (N, dim) float32 rows, one unit vector per pooled layer."""

    def __init__(self, model: str = PACKAGED_MINILM, max_tokens: int = 128, dtype: str = "auto", batch_size: int = 64,
                 layers: str | list[int] = "last"):
        import torch
        from transformers import AutoModel, AutoTokenizer

        path = resolve_encoder(model)
        self.model_name = model
        self.max_tokens, self.batch_size = max_tokens, batch_size
        self.dtype = resolve_dtype(dtype)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.net = AutoModel.from_pretrained(path, dtype=getattr(torch, self.dtype)).eval()
        self.n_layers = int(self.net.config.num_hidden_layers)
        self.layers = resolve_layers(layers, self.n_layers)
        self.dim = int(self.net.config.hidden_size) * len(self.layers)
        # Layers above the highest one read are never run (a BERT-style stack is a ModuleList): [0, 1, 2, 3]
        # costs 3 of MiniLM's 6 layers.
        stack = getattr(getattr(self.net, "encoder", None), "layer", None)
        if max(self.layers) < self.n_layers and isinstance(stack, torch.nn.ModuleList):
            self.net.encoder.layer = stack[:max(self.layers)]

    def describe(self) -> dict:
        """What a model trained on these features must be applied with (saved with the distilled student)."""
        return {"model": self.model_name, "max_tokens": self.max_tokens, "dtype": self.dtype, "dim": self.dim,
                "layers": self.layers}

    def encode(self, texts: list[str]) -> np.ndarray:
        import torch

        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        enc = self.tokenizer(list(texts), truncation=True, max_length=self.max_tokens)
        ids = enc["input_ids"]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # similar lengths share a batch: little padding
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                idx = order[start:start + self.batch_size]
                batch = self.tokenizer.pad({"input_ids": [ids[i] for i in idx]}, return_tensors="pt")
                mask = batch["attention_mask"]
                if self.layers == [self.n_layers]:
                    pooled = mean_pool(self.net(input_ids=batch["input_ids"], attention_mask=mask).last_hidden_state, mask)
                else:
                    states = self.net(input_ids=batch["input_ids"], attention_mask=mask, output_hidden_states=True).hidden_states
                    pooled = torch.cat([mean_pool(states[i], mask) for i in self.layers], dim=1)
                out[idx] = pooled.numpy()
        return out
