"""Build the model and tokenizer a run trains: a tiny Llama from config, any HF model, or SmolLM2.

- ``tiny``: a Llama-style model built from config (random init, seeded) on the corpus-trained BPE
  tokenizer (its folder is passed in; see tokenizer_bpe.py);
- ``hf``: ``from_pretrained`` on a local folder or hub id (the hub only where one is reachable), or with
  ``path: packaged:smollm2`` the packaged SmolLM2-135M-Instruct GGUF (treasure.models.packaged),
  dequantized by transformers.
A tokenizer without a pad token gets its eos as pad (labels mask the padding anyway).
"""

from __future__ import annotations

from treasure.train.config import LoraConfig, ModelConfig


def load_tokenizer(model: ModelConfig, tokenizer_dir: str | None):
    from transformers import AutoTokenizer

    if model.kind == "tiny":
        if tokenizer_dir is None:
            raise ValueError("model.kind=tiny needs the trained BPE tokenizer folder")
        tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    elif model.packaged:
        from treasure.models.packaged import load_smollm2_tokenizer

        tok = load_smollm2_tokenizer()
    else:
        tok = AutoTokenizer.from_pretrained(model.path)
    if model.chat_template:
        set_chat_template(tok, model.chat_template)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if not tok.chat_template:
        raise ValueError(f"tokenizer of {model.kind} model {model.path or ''} has no chat template (a base model?); "
                         "markers go inside one: set model.chat_template to plain, chatml or a Jinja file")
    return tok


CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>' + '\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def set_chat_template(tok, template: str) -> None:
    """Give `tok` the chat template `template` names (see ModelConfig.chat_template)."""
    from treasure.train.tokenizer_bpe import CHAT_TEMPLATE

    if template == "plain":
        if tok.eos_token is None:
            raise ValueError("model.chat_template=plain ends each answer with the eos token; this tokenizer has none")
        tok.chat_template = CHAT_TEMPLATE
    elif template == "chatml":
        vocab = tok.get_vocab()
        missing = [t for t in ("<|im_start|>", "<|im_end|>") if t not in vocab]
        if missing:
            raise ValueError(f"model.chat_template=chatml: the tokenizer has no {missing} token; adding tokens would "
                             "need new embeddings, so use `plain` or a Jinja file written in this tokenizer's tokens")
        tok.chat_template = CHATML
        tok.eos_token = "<|im_end|>"  # the answer ends with it: generation must stop on it
    else:
        from pathlib import Path

        path = Path(template)
        if not path.is_file():
            raise ValueError(f"model.chat_template={template!r} is neither plain, chatml nor a file")
        tok.chat_template = path.read_text(encoding="utf-8")


def tiny_llama_config(model: ModelConfig, tokenizer, max_length: int):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=model.hidden_size, intermediate_size=model.intermediate_size,
        num_hidden_layers=model.num_layers, num_attention_heads=model.num_heads,
        num_key_value_heads=model.num_heads, max_position_embeddings=max_length,
        tie_word_embeddings=True,  # a small model spends most parameters on embeddings otherwise
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )


def build_model(model: ModelConfig, tokenizer, *, max_length: int, seed: int):
    """The causal LM (float32 weights; autocast handles bf16 on GPU)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    torch.manual_seed(seed)
    if model.kind == "tiny":
        lm = LlamaForCausalLM(tiny_llama_config(model, tokenizer, max_length))
    elif model.packaged:
        from treasure.models.packaged import load_smollm2_model

        lm = load_smollm2_model(dtype=torch.float32)
    else:
        lm = AutoModelForCausalLM.from_pretrained(model.path, dtype=torch.float32)
    if lm.config.pad_token_id is None:
        lm.config.pad_token_id = tokenizer.pad_token_id
    if model.chat_template == "chatml" and lm.generation_config is not None:
        lm.generation_config.eos_token_id = tokenizer.eos_token_id  # answers end with <|im_end|> now
    return lm


def cpu_has_bf16() -> bool:
    """Whether this CPU has native bf16 matrix instructions (avx512_bf16 or AMX), read from /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:  # not Linux: no reliable way to tell; fp32 is the safe choice
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, *, use_gpu: bool) -> str:
    """'bf16' or 'fp32' for a train config's `precision` (auto: bf16 on GPUs and on CPUs with bf16 instructions).

    >>> resolve_precision("fp32", use_gpu=True), resolve_precision("auto", use_gpu=True)
    ('fp32', 'bf16')
    """
    if precision != "auto":
        return precision
    return "bf16" if use_gpu or cpu_has_bf16() else "fp32"


def add_lora(lm, lora: LoraConfig):
    """Wrap `lm` with peft LoRA adapters (only they train)."""
    from peft import LoraConfig as PeftLora, get_peft_model

    cfg = PeftLora(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                   target_modules=list(lora.target_modules), task_type="CAUSAL_LM")
    return get_peft_model(lm, cfg)


def block_classes(lm) -> set[type]:
    """The transformer block classes of `lm` (peft-wrapped or not), from HF's `_no_split_modules`."""
    base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
    names = set(getattr(base, "_no_split_modules", None) or [])
    return {type(m) for m in base.modules() if type(m).__name__ in names}


def fsdp_kwargs(lm) -> dict:
    """FSDP's arguments for `lm`: every transformer block its own unit, so a rank gathers one block's
    parameters at a time instead of the whole model (the default wraps the model as one unit).
    `use_orig_params` keeps LoRA's frozen and trainable parameters apart inside a unit."""
    import functools

    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    classes = block_classes(lm)
    if not classes:
        raise ValueError(f"{type(lm).__name__} names no transformer block class (_no_split_modules): FSDP would "
                         "shard it as one unit; use strategy: ddp")
    return {"auto_wrap_policy": functools.partial(transformer_auto_wrap_policy, transformer_layer_cls=classes),
            "use_orig_params": True}


def count_parameters(lm) -> int:
    """Parameters N for the MFU formula (tied embeddings counted once)."""
    return sum(p.numel() for p in {id(p): p for p in lm.parameters()}.values())
