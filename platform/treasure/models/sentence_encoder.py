"""Sentence embeddings on CPU: a BERT-style encoder, mean pooling over real tokens, L2 normalization.

This is what sentence-transformers does for all-MiniLM-L6-v2 (modules Transformer → Pooling(mean)
→ Normalize), written with transformers alone so the packaged model (`packaged:minilm`,
treasure.models.packaged) loads without the sentence-transformers package.

    enc = SentenceEncoder("packaged:minilm", max_tokens=128)
    enc.encode(["How do I sort a list?", "Tell me a joke"])   # (2, 384) float32, unit rows

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


class SentenceEncoder:
    """A sentence encoder loaded once; `encode(texts)` → (N, dim) float32 unit vectors."""

    def __init__(self, model: str = PACKAGED_MINILM, max_tokens: int = 128, dtype: str = "auto", batch_size: int = 64):
        import torch
        from transformers import AutoModel, AutoTokenizer

        path = resolve_encoder(model)
        self.model_name = model
        self.max_tokens, self.batch_size = max_tokens, batch_size
        self.dtype = resolve_dtype(dtype)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.net = AutoModel.from_pretrained(path, dtype=getattr(torch, self.dtype)).eval()
        self.dim = int(self.net.config.hidden_size)

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
                hidden = self.net(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
                out[idx] = mean_pool(hidden, batch["attention_mask"]).numpy()
        return out
