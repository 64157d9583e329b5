"""Loading a causal LM and its tokenizer: the one place every model-using component goes through.

`model` is the packaged SmolLM2 (`packaged:smollm2`, loaded from its exported plain-HF folder:
safetensors load in about a second, de-quantizing the GGUF takes 10 s or more), a local folder, a
checkpoint URI (s3://, validated by `treasure.models.checkpoint`) or a Hub id where a hub is reachable.
Engines, the tagger, the quality scorer, the judges and the held-out loss all call `load_causal_lm`.
"""

from __future__ import annotations

from pathlib import Path

from treasure.models.packaged import PACKAGED_SMOLLM2


def resolve_model_dir(model: str) -> str:
    """A local folder for `model`: a local path as is, a URI (s3://, models:/) through treasure.models.checkpoint."""
    if model == PACKAGED_SMOLLM2:
        return model
    if Path(model).is_dir():
        return str(Path(model))
    if "://" in model:
        from treasure.models.checkpoint import resolve_checkpoint  # written by the training stage

        return str(resolve_checkpoint(model))
    raise FileNotFoundError(f"model {model!r} is neither a checkpoint folder nor a URI")


def model_folder(model: str) -> str:
    """A local folder (or Hub id) for `model`."""
    from treasure.models.packaged import smollm2_hf_dir

    if model == PACKAGED_SMOLLM2:
        return str(smollm2_hf_dir())
    try:
        return resolve_model_dir(model)
    except FileNotFoundError:
        return model  # a Hub id: from_pretrained resolves it (or says clearly that it cannot)


def load_causal_lm(model: str, dtype=None):
    """(model in eval mode, tokenizer) for `model`; `dtype` a torch dtype (default: the weights' own, float32 here)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = model_folder(model)
    lm = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    return lm.eval(), AutoTokenizer.from_pretrained(folder)
