"""Shared fixtures. Ray-based tests share one local cluster per session (pinned to loopback)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_raylet_start_wait_time_s", "120")


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
    from treasure.models.packaged import load_smollm2_tokenizer

    out = tmp_path_factory.mktemp("smollm2_tokenizer")
    load_smollm2_tokenizer().save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, smollm2_tokenizer, taxonomy):
    """A random-init tiny Llama in the checkpoint layout of docs/data-formats.md (mechanics only)."""
    import json

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tok = smollm2_tokenizer
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    out = tmp_path_factory.mktemp("tiny_checkpoint")
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    (out / "taxonomy.yaml").write_text(taxonomy.to_yaml())
    (out / "treasure.json").write_text(json.dumps({
        "markers": True, "taxonomy_version": taxonomy.version, "data_manifest_id": None,
        "config": {}, "step": 0, "quality_reference": {},
    }))
    return out


# The bearer token of every test app with auth on (a placeholder, not a secret).
TEST_TOKEN_ENV, TEST_TOKEN = "TREASURE_SERVE_TEST_TOKEN", "test-token-not-a-secret"


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray cluster for the whole test session, pinned to loopback, 2 CPUs.

    Retried: Ray gives a new raylet a fixed window to register (RAY_raylet_start_wait_time_s, raised
    above), which a busy 2-core machine can still miss ("The current node timed out during startup").
    """
    import time

    import ray

    # Serve replicas read bearer tokens from their own process environment, never from a runtime env:
    # the test token is in place before Ray starts the workers that inherit it.
    os.environ.setdefault(TEST_TOKEN_ENV, TEST_TOKEN)
    for attempt in range(3):
        if ray.is_initialized():
            break
        try:
            ray.init(num_cpus=2, _node_ip_address="127.0.0.1", include_dashboard=True, dashboard_host="127.0.0.1",
                     runtime_env={"env_vars": {"RAY_AUTH_MODE": os.environ["RAY_AUTH_MODE"]}}, log_to_driver=False)
        except Exception:
            ray.shutdown()
            if attempt == 2:
                raise
            time.sleep(5)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 protocol endpoint for the session: moto's threaded server on 127.0.0.1, a free port."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(s3_server, monkeypatch):
    """A fresh bucket on the moto server, with AWS_* pointing at it for this test; yields 's3://<bucket>'."""
    import boto3

    # Placeholder credentials: moto accepts any; real ones never appear in code.
    for key, value in {"AWS_ENDPOINT_URL": s3_server, "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    yield f"s3://{name}"


@pytest.fixture(scope="session")
def mlflow_store(tmp_path_factory):
    """A private MLflow store (sqlite + local artifacts) for the session; yields the tracking URI."""
    root = tmp_path_factory.mktemp("mlflow")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.setenv("MLFLOW_ARTIFACT_ROOT", (root / "artifacts").as_uri())
        yield f"sqlite:///{root / 'mlflow.db'}"


@pytest.fixture(scope="session")
def smollm2_checkpoint(tmp_path_factory, taxonomy):
    """The real SmolLM2-135M-Instruct (packaged, exported once as a plain HF folder) in the checkpoint
    layout, as an untrained base model (`markers: false`): what vLLM serves in the default suite."""
    import json

    from treasure.models.packaged import smollm2_hf_dir

    out = tmp_path_factory.mktemp("smollm2_checkpoint")
    for f in smollm2_hf_dir().iterdir():
        (out / f.name).symlink_to(f)
    (out / "taxonomy.yaml").write_text(taxonomy.to_yaml())
    (out / "treasure.json").write_text(json.dumps({
        "markers": False, "taxonomy_version": taxonomy.version, "data_manifest_id": None,
        "config": {}, "step": 0, "quality_reference": {},
    }))
    return out
