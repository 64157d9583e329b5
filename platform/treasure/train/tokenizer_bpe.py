"""A byte-level BPE tokenizer trained on the corpus, with a chat template of plain-text turn markers.

The tiny default model has no pretrained tokenizer, so we train one on the annotated corpus with
the marker blocks rendered in (so tags like ``<domain>`` become a few tokens), once per data
manifest, and cache it: the baseline and the marked model then share exactly one tokenizer.
Marker blocks and turn markers stay ordinary text; the only special tokens are pad, bos, eos:

    <|user|>\\n{user turn}\\n<|assistant|>\\n{assistant turn}</s>

>>> tok = train_bpe(["hello world " * 20], vocab_size=300)
>>> chat_prompt = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
>>> chat_prompt
'<|user|>\\nhi\\n<|assistant|>\\n'
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

USER = "<|user|>\n"
ASSISTANT = "\n<|assistant|>\n"
PAD, BOS, EOS = "<pad>", "<s>", "</s>"
# Jinja template (HF chat_template): plain-text turn markers, eos ends each assistant turn. The
# markers are set as string literals because HF renders with trim_blocks (newlines after tags vanish).
CHAT_TEMPLATE = (
    "{% set user_marker = " + repr(USER) + " %}{% set assistant_marker = " + repr(ASSISTANT) + " %}"
    "{% for m in messages %}"
    "{% if m['role'] == 'user' %}{{ user_marker }}{{ m['content'] }}"
    "{% elif m['role'] == 'assistant' %}{{ assistant_marker }}{{ m['content'] }}{{ eos_token }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ assistant_marker }}{% endif %}"
)
# Bump when the template or training recipe changes, so cached tokenizers are not reused wrongly.
RECIPE_VERSION = "bpe-v1"


def chat_text(user_turn: str, assistant_turn: str) -> str:
    """What the chat template renders for one exchange (the tokenizer's training text)."""
    return f"{USER}{user_turn}{ASSISTANT}{assistant_turn}"


def train_bpe(texts: Iterable[str], vocab_size: int):
    """Train a byte-level BPE on `texts`; returns a transformers fast tokenizer with the chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    core.train_from_iterator(texts, trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token=PAD, bos_token=BOS, eos_token=EOS)
    tok.chat_template = CHAT_TEMPLATE
    return tok


def cache_key(data_manifest_id: str, vocab_size: int, taxonomy_version: str) -> str:
    blob = json.dumps([RECIPE_VERSION, data_manifest_id, vocab_size, taxonomy_version])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cached_bpe(cache_dir: str | Path, key: str, texts_fn, vocab_size: int) -> Path:
    """Folder of the tokenizer for `key`, training it from `texts_fn()` on first use.

    Written to a temporary folder and renamed into place, so two runs racing (baseline and marked
    in parallel) never see a half-written tokenizer.
    """
    folder = Path(cache_dir) / key
    if (folder / "tokenizer.json").exists():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=folder.parent))
    train_bpe(texts_fn(), vocab_size).save_pretrained(tmp)
    try:
        os.rename(tmp, folder)
    except OSError:  # another run won the race; theirs is identical
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
