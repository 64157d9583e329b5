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


@pytest.fixture(scope="session")
def lessons_checkpoint(tmp_path_factory, taxonomy):
    """tests/marker_lessons.py's marked model, fitted once per session: it writes a marker block, then
    the answer it learnt (greedy), so what a server or evaluation makes of a real block can be checked
    exactly. Read-only for its users."""
    from marker_lessons import train_lessons

    return train_lessons(tmp_path_factory.mktemp("lessons_marked"), taxonomy, markers=True, steps=150)


# The bearer token of every test app with auth on (a placeholder, not a secret).
TEST_TOKEN_ENV, TEST_TOKEN = "TREASURE_SERVE_TEST_TOKEN", "test-token-not-a-secret"
# Placeholder AWS credentials (moto accepts any; real ones never appear in code), with canary values
# for the secret parts: tests search the dashboard, logs, task arguments and MLflow for them.
from secret_places import AWS_SECRET_CANARY, AWS_SESSION_CANARY  # noqa: E402


from ports import free_port as _free_port  # noqa: E402


def session_aws_env() -> dict[str, str]:
    """The session's S3 settings, set in this process's environment once, before Ray starts.

    Ray workers inherit the environment of the process that started the cluster, as a real node's
    workers see the node's own credentials; nothing passes credentials to tasks (issue 16 #5). The
    session token makes these temporary credentials, as STS / SSO hand out.
    """
    if "TREASURE_TEST_S3_PORT" not in os.environ:
        port = str(_free_port())
        os.environ.update({"TREASURE_TEST_S3_PORT": port, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
                           "AWS_ACCESS_KEY_ID": "ASIATESTINGTESTING", "AWS_SECRET_ACCESS_KEY": AWS_SECRET_CANARY,
                           "AWS_SESSION_TOKEN": AWS_SESSION_CANARY, "AWS_DEFAULT_REGION": "us-east-1"})
    return {k: os.environ[k] for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                       "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION")}


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray cluster for the whole test session, pinned to loopback, 2 CPUs.

    Retried: Ray gives a new raylet a fixed window to register (RAY_raylet_start_wait_time_s, raised
    above), which a busy 2-core machine can still miss ("The current node timed out during startup").
    """
    import time

    import ray

    # Serve replicas read bearer tokens, and workers AWS credentials, from their own process
    # environment, never from a runtime env or task arguments: both are in place before Ray starts
    # the workers that inherit them.
    os.environ.setdefault(TEST_TOKEN_ENV, TEST_TOKEN)
    session_aws_env()
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


class MotoEndpoint:
    """moto's threaded S3 server on the session's port; `stop()` / `start()` take it away and bring it
    back on the same port (its buckets live in this process, so they survive)."""

    def __init__(self, port: int):
        self.port, self.server = port, None
        self.url = f"http://127.0.0.1:{port}"

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        self.stop()
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


@pytest.fixture(scope="session")
def s3_endpoint():
    """The session's real S3 protocol endpoint (moto) at the address in the session's AWS_* settings."""
    session_aws_env()
    endpoint = MotoEndpoint(int(os.environ["TREASURE_TEST_S3_PORT"]))
    endpoint.start()
    yield endpoint
    endpoint.stop()


@pytest.fixture(scope="session")
def s3_server(s3_endpoint):
    """The session's S3 endpoint URL (moto's threaded server on 127.0.0.1)."""
    return s3_endpoint.url


@pytest.fixture
def s3_bucket(s3_server, monkeypatch):
    """A fresh bucket on the moto server, with the session's AWS_* in the environment; yields 's3://<bucket>'."""
    import boto3

    for key, value in session_aws_env().items():
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
