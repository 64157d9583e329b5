"""Reliability fixtures: reuse the other areas' fixtures (annotate data + MLflow + moto, Serve app),
and collect each scenario's record for run.py (TREASURE_RELIABILITY_RECORDS names a JSONL file)."""

from __future__ import annotations

import json
import os

import pytest

from scenarios import serving_fixtures



@pytest.fixture(scope="session")
def annotate_mlflow(mlflow_store):
    """The session's private MLflow store (tests/conftest.py), under the name the scenarios use."""
    return mlflow_store


@pytest.fixture(scope="module")
def serve_http(ray_local):
    """Serve's HTTP proxy for this module's apps: the running one if another area's session fixture
    already started Serve (its port wins; a second serve.start would be ignored), else a fresh one on
    a free loopback port, shut down after the module so later areas can start their own."""
    from ray import serve
    from ray.serve.context import _get_global_client

    try:
        client = _get_global_client(raise_if_no_controller_running=True)
    except Exception:  # no Serve running in this cluster
        client = None
    if client is not None:
        yield f"http://127.0.0.1:{client.http_config.port}"
        return
    port = serving_fixtures.free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
serve_app = serving_fixtures.serve_app


@pytest.fixture
def check_record():
    """Assert a scenario record (lost == 0, not hung, no failed expectation) after writing it where run.py collects it."""

    def check(rec: dict) -> dict:
        target = os.environ.get("TREASURE_RELIABILITY_RECORDS")
        if target:
            with open(target, "a") as f:
                f.write(json.dumps(rec) + "\n")
        print(json.dumps(rec))
        assert not rec["hung"], rec
        assert rec["lost"] == 0, rec
        assert not rec["failed"], rec
        return rec

    return check
