"""Shared fixtures. Ray-based tests share one local cluster per session (pinned to loopback)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def taxonomy():
    from treasure.taxonomy import load_taxonomy

    return load_taxonomy("paper")


@pytest.fixture(scope="session")
def smollm2_tokenizer_dir(tmp_path_factory):
    """SmolLM2's real tokenizer (from the packaged GGUF), saved once as a plain HF folder."""
    from treasure.packaged import load_smollm2_tokenizer

    out = tmp_path_factory.mktemp("smollm2_tokenizer")
    load_smollm2_tokenizer().save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)
