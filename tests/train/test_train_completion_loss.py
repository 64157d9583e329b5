"""Completion-only logits give the same loss (and gradients) as transformers' full-logits loss."""

from __future__ import annotations

import pytest
import torch

from treasure.chat_format import IGNORE_INDEX
from treasure.train.completion_loss import CompletionLM, full_logits_loss, supports_completion_logits


def _tiny_lm(vocab=97):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True, pad_token_id=0)
    return LlamaForCausalLM(cfg)


def _batch(vocab=97):
    """Right-padded rows of different lengths, prompts masked: the training loop's batch shape."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, vocab, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    labels = ids.clone()
    labels[0, :5] = IGNORE_INDEX        # prompt
    labels[1, :2] = IGNORE_INDEX
    labels[2, :7] = IGNORE_INDEX
    mask[1, 9:] = 0                      # padding
    labels[1, 9:] = IGNORE_INDEX
    ids[1, 9:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@pytest.mark.parametrize("lora", [False, True])
def test_completion_loss_equals_full_logits_loss(lora):
    lm = _tiny_lm()
    if lora:
        from peft import LoraConfig, get_peft_model

        lm = get_peft_model(lm, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    batch = _batch()
    assert supports_completion_logits(lm)
    full = full_logits_loss(lm, batch)
    full.backward()
    full_grads = {n: p.grad.clone() for n, p in lm.named_parameters() if p.requires_grad}
    lm.zero_grad()
    ours = CompletionLM(lm)(**batch)
    ours.backward()
    assert torch.allclose(ours, full, atol=1e-5), (ours.item(), full.item())
    for n, p in lm.named_parameters():
        if p.requires_grad:
            assert torch.allclose(p.grad, full_grads[n], atol=1e-5), n


def test_completion_loss_sees_only_labelled_positions():
    """Changing a label on a prompt position changes nothing; changing a completion label changes the loss."""
    lm = _tiny_lm()
    batch = _batch()
    base = CompletionLM(lm)(**batch).item()
    masked = {**batch, "input_ids": batch["input_ids"].clone()}
    masked["input_ids"][1, 9:] = 5  # padding content (mask 0, labels -100) does not reach the loss
    assert CompletionLM(lm)(**masked).item() == pytest.approx(base, abs=1e-6)
    other = {**batch, "labels": batch["labels"].clone()}
    other["labels"][0, 8] = (other["labels"][0, 8] + 1) % 97
    assert CompletionLM(lm)(**other).item() != pytest.approx(base, abs=1e-6)
