"""Loss on completion tokens only, with logits computed only where there are labels.

A causal LM's output layer maps every position to the whole vocabulary (SmolLM2: 49,152 values
per position). The training loss needs logits only where the shifted labels are not -100, i.e.
the completion; prompt and padding positions are wasted work and memory (B × T × V floats,
~400 MB at batch 8 × 256 in float32). ``CompletionLM`` runs the model's decoder to its last
hidden states, keeps the labelled positions and applies the output layer to those alone. The
loss equals transformers' own (mean cross-entropy over labelled shifted positions, in float32).

Models whose logits are post-processed after the output layer (final soft-capping, a logit
scale) cannot use this path: ``supports_completion_logits`` says so and the loop falls back to
the model's own forward.
"""

from __future__ import annotations

import torch

from treasure.chat_format import IGNORE_INDEX


def supports_completion_logits(lm) -> bool:
    """True when logits are exactly output_layer(last hidden state) for `lm`'s architecture."""
    cfg = lm.config
    return not (getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None)) and \
        lm.get_output_embeddings() is not None


class CompletionLM(torch.nn.Module):
    """forward(input_ids, attention_mask, labels) → mean loss over labelled positions (a 0-d tensor).

    Wrapping (rather than calling submodules from the loop) keeps DDP's hooks on the module that
    runs forward, so gradients still synchronize.
    """

    def __init__(self, lm):
        super().__init__()
        self.lm = lm

    def forward(self, input_ids, attention_mask, labels):
        hidden = self.lm.get_decoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, H)
        targets = labels[:, 1:]  # position t predicts token t + 1
        keep = targets != IGNORE_INDEX  # (B, T-1)
        logits = self.lm.get_output_embeddings()(hidden[:, :-1][keep])  # (N, V): labelled positions only
        return torch.nn.functional.cross_entropy(logits.float(), targets[keep])


def full_logits_loss(lm, batch) -> torch.Tensor:
    """The reference: transformers' own loss over full logits (what CompletionLM must equal)."""
    return lm(**batch).loss
