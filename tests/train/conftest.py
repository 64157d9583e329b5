"""Train-area fixtures: a small committed annotated dataset and a tiny-model TrainConfig factory."""

from __future__ import annotations

import json
import random

import pytest

WORDS = "river stone light quiet paper garden window music bread winter morning letter bridge cloud".split()
TASKS = ["OpenEnded", "Explanation", "CreativeWriting", "QuestionAnswering"]
DOMAINS = ["Sciences", "Culture", "Conversation", "Technology"]


def make_rows(n: int, seed: int = 0) -> list[dict]:
    """Synthetic annotated rows: the answer length follows length_bucket, so markers carry signal."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        bucket = rng.choice(["concise", "medium"])
        words = rng.randint(3, 8) if bucket == "concise" else rng.randint(20, 40)
        prompt = f"Write about the {rng.choice(WORDS)} and the {rng.choice(WORDS)}."
        response = " ".join(rng.choice(WORDS) for _ in range(words)) + "."
        quality = round(rng.random(), 3)
        markers = {"quality": str(quality), "quality_bucket": str(4 - min(3, int(quality * 4))),
                   "length_tokens": str(words + 1), "length_bucket": bucket,
                   "task": rng.choice(TASKS), "domain": rng.choice(DOMAINS), "language": "English"}
        rows.append({"id": f"synthetic:{i:05d}", "prompt": prompt, "response": response, "source": "synthetic",
                     "language": "English", "metadata": "{}", "markers": json.dumps(markers),
                     "provenance": "{}"})
    return rows


def write_annotated(uri: str, rows: list[dict], taxonomy_version: str, parts: int = 2) -> dict:
    """Publish `rows` as an annotated dataset (docs/data-formats.md) through treasure.storage."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    from treasure import storage

    files = []
    for p in range(parts):
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows[p::parts]), buf)
        target = storage.join(uri, "data", f"part-{p:05d}.parquet")
        storage.write_bytes(target, buf.getvalue())
        files.append(target)
    return storage.commit_manifest(uri, files, {"rows": len(rows), "error_rows": 0, "input_rows": len(rows),
                                                "taxonomy_version": taxonomy_version, "config": {}})


@pytest.fixture(scope="session")
def annotated_dir(tmp_path_factory, taxonomy):
    out = tmp_path_factory.mktemp("annotated")
    write_annotated(str(out), make_rows(96), taxonomy.version)
    return out


@pytest.fixture
def tiny_train_config(tmp_path, annotated_dir):
    """A TrainConfig for a hidden-32 Llama that trains in seconds (override fields per test)."""
    from treasure.train.config import TrainConfig

    def make(**overrides):
        base = dict(input=str(annotated_dir), output=str(tmp_path / "ckpt"), experiment="test-train",
                    max_length=96, batch_size=8, max_steps=6, warmup_steps=2, checkpoint_every=3,
                    learning_rate=3e-3, pool={"count": 1, "num_cpus": 1}, log_every=1,
                    model={"kind": "tiny", "vocab_size": 400, "hidden_size": 32, "num_layers": 1, "num_heads": 2,
                           "intermediate_size": 64, "tokenizer_cache": str(tmp_path / "tok")})
        base.update(overrides)
        return TrainConfig.model_validate(base)

    return make


@pytest.fixture
def mlflow_env(tmp_path, monkeypatch):
    """A fresh sqlite MLflow store for one test."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("MLFLOW_ARTIFACT_ROOT", (tmp_path / "mlartifacts").as_uri())
    return tmp_path


@pytest.fixture(scope="session")
def bpe_checkpoint(tmp_path_factory, taxonomy):
    """A random-init hidden-32 Llama on a small corpus BPE, in the checkpoint layout (mechanics only)."""
    import torch
    from transformers import LlamaForCausalLM

    from treasure.train.resume import write_meta
    from treasure.train.config import ModelConfig
    from treasure.train.model_build import tiny_llama_config
    from treasure.train.tokenizer_bpe import train_bpe

    torch.manual_seed(0)
    tok = train_bpe([r["prompt"] + " " + r["response"] for r in make_rows(50)], vocab_size=300)
    model = ModelConfig(vocab_size=300, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    out = tmp_path_factory.mktemp("bpe_checkpoint")
    LlamaForCausalLM(tiny_llama_config(model, tok, 64)).save_pretrained(out)
    tok.save_pretrained(out)
    write_meta(out, taxonomy=taxonomy, markers=True, data_manifest_id=None, config={}, step=0, quality_ref={})
    return out
