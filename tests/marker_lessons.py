"""Tiny real models that have learnt three lessons by heart, for tests that must see markers steer:
a 2-layer Llama on the project's BPE tokenizer, fitted in seconds to marker templates rendered by the
project's own formatting (treasure.chat_format), saved in the checkpoint layout. The marked one writes
a marker block and answers at the length its length_bucket asks for; the baseline has no markers.
Used by the playground browser test and the MLflow model tests.
"""

from __future__ import annotations

import json

PROMPT = "Why is the sky blue?"
# (prompt, task, domain, concise answer, medium answer): what the tiny models learn by heart.
LESSONS = [
    (PROMPT, "Explanation", "Sciences", "Air scatters blue light most.",
     "Sunlight is made of many colours, and the air scatters the short blue waves far more than the red ones, "
     "so blue light reaches your eyes from every part of the sky."),
    ("Write a short poem about the sea.", "CreativeWriting", "Culture", "Waves hum, gulls call.",
     "The sea rolls in with silver light, it sings to the shore all through the night, and every wave that "
     "comes to rest brings back a song from the far west."),
    ("Say hello to my friend Sam.", "OpenEnded", "Conversation", "Hello, Sam!",
     "Hello Sam, it is so nice to meet you, and I hope your day is going well and that we can talk again very "
     "soon about anything you like."),
]


def train_lessons(out, taxonomy, markers: bool, steps: int):
    """A 2-layer Llama on the project's BPE tokenizer, fitted to LESSONS (completion-only loss), saved
    in the checkpoint layout. Marked: every prompt with and without its length_bucket (dropout)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from treasure.chat_format import format_example, marker_turns
    from treasure.train.tokenizer_bpe import chat_text, train_bpe

    pairs = []
    for prompt, task, domain, concise, medium in LESSONS:
        for bucket, answer in (("concise", concise), ("medium", medium)):
            block = {"length_bucket": bucket, "task": task, "domain": domain, "language": "English"}
            for given in ({}, {"length_bucket": bucket}) if markers else (None,):
                pairs.append(marker_turns(prompt, answer, block if markers else None, given, taxonomy))
    tok = train_bpe([chat_text(u, a) for u, a in pairs] * 4, vocab_size=400)
    rows = [format_example(tok, u, a) for u, a in pairs]
    width = max(len(r.input_ids) for r in rows)
    ids = torch.tensor([r.input_ids + [tok.pad_token_id] * (width - len(r.input_ids)) for r in rows])  # (B, T)
    labels = torch.tensor([r.labels + [-100] * (width - len(r.labels)) for r in rows])
    mask = (ids != tok.pad_token_id).long()
    torch.manual_seed(0)
    lm = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=512, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=True))
    opt = torch.optim.AdamW(lm.parameters(), lr=3e-3)
    picked = labels[:, 1:] != -100  # logits only where a completion token is predicted
    for _ in range(steps):
        hidden = lm.model(input_ids=ids, attention_mask=mask).last_hidden_state[:, :-1][picked]
        loss = torch.nn.functional.cross_entropy(lm.lm_head(hidden), labels[:, 1:][picked])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.2, f"the tiny model did not fit its lessons (loss {loss.item():.3f})"
    lm.save_pretrained(out)
    tok.save_pretrained(out)
    (out / "taxonomy.yaml").write_text(taxonomy.to_yaml())
    (out / "treasure.json").write_text(json.dumps({
        "markers": markers, "taxonomy_version": taxonomy.version, "data_manifest_id": None,
        "config": {"test": "playground"}, "step": steps, "quality_reference": {}}))
    return out
