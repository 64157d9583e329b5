"""Fixtures of the corpus tests: a real S3 endpoint (moto's server on 127.0.0.1) and an MLflow store.

`s3_server` / `s3_bucket` are general: any area can use them (they could move to tests/conftest.py).
"""

from __future__ import annotations

import uuid

import pytest


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
def bad_rows() -> bytes:
    """A JSONL file (fields q, a, topic) with one of each kind of bad record; see the comments."""
    return b"\n".join([
        b'{"q": "What is 2+2?", "a": "4", "topic": "math"}',
        b'{"q": "Name a color", "a": ',                                # truncated JSON
        b'{"q": 5, "a": "five"}',                                      # wrong type
        b'{"q": "Say nothing", "a": "   "}',                           # empty response
        b'{"q": "bad bytes \xff\xfe here", "a": "x"}',                 # invalid UTF-8
        b'{"q": "What is 2+2?", "a": "4", "topic": "again"}',          # duplicate of line 1
        b'{"a": "no prompt field"}',                                   # missing field
        b'[1, 2, 3]',                                                  # not an object
        b'{"q": "Capital of France?", "a": "Paris", "topic": "\xc3"}',  # invalid UTF-8 in metadata
        b'',                                                           # blank line: layout, not a record
        b'{"q": "Capital of Italy?", "a": "Rome", "topic": "geo"}',
    ])
