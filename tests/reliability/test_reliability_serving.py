"""Reliability scenarios of the Serve app (issue 9): marker injection through the server's request path
(fast, thousands of texts) and over HTTP, auth on every route, overload and a replica killed under load."""

from __future__ import annotations

import os

import pytest

import scenarios_serving as ss

# Set in the replicas' environment by the session's Ray (tests/conftest.py).
TOKEN = "test-token-not-a-secret"
TOKEN_ENV = "TREASURE_SERVE_TEST_TOKEN"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.mark.reliability
def test_marker_injection_server_path(tiny_checkpoint, taxonomy, check_record):
    from treasure.serving.config import ServeConfig
    from treasure.serving.server import ModelServer

    server = ModelServer(ServeConfig(checkpoint=str(tiny_checkpoint), engine="transformers", max_prompt_tokens=4096))
    rec = check_record(ss.injection_pure(server, taxonomy, n=2000))
    assert "0 unsafe" in rec["happened"]


@pytest.fixture(scope="module")
def guarded(serve_app):
    return serve_app(auth_token_env=TOKEN_ENV, api_docs=True, max_tokens_limit=16, default_max_tokens=4, max_prompt_tokens=2048,
                     max_ongoing_requests=2, max_queued_requests=2, max_batch_size=2, log_requests=True)


@pytest.mark.slow  # over a minute (89 s + 20 s setup on 2 cores); the unit-level injection checks stay in the default suite
@pytest.mark.reliability
def test_marker_and_special_token_injection_http(ray_local, guarded, taxonomy, tiny_checkpoint, check_record):
    from pathlib import Path

    from transformers import AutoTokenizer

    logs = Path(ray_local._private.worker._global_node.get_session_dir_path()) / "logs"
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint)
    rec = check_record(ss.injection_http(guarded, AUTH, taxonomy, tokenizer, logs, n=200))
    assert " 0 unsafe" in rec["happened"], rec


@pytest.mark.slow
@pytest.mark.reliability
def test_auth_on_every_route(guarded, check_record):
    check_record(ss.auth_routes(guarded, TOKEN))


@pytest.mark.slow
@pytest.mark.reliability
def test_overload_fast_503_bounded_memory(ray_local, guarded, check_record):
    rec = check_record(ss.overload(ray_local, guarded, AUTH, clients=64, seconds=30, capacity=4))
    assert rec["p95_503_s"] is not None and rec["p95_503_s"] < 5.0, rec
    assert rec["rss_growth_mb"] < 300, rec


@pytest.mark.slow
@pytest.mark.reliability
def test_replica_killed_under_load(ray_local, serve_http, tiny_checkpoint, check_record):
    from ray import serve

    from treasure.serving.app import make_deployment
    from treasure.serving.config import ServeConfig

    name = f"reliability_replicas_{os.getpid()}"
    config = ServeConfig(checkpoint=str(tiny_checkpoint), engine="transformers", num_cpus=0.25, default_max_tokens=8, max_tokens_limit=8)
    serve.run(make_deployment(config).options(num_replicas=2).bind(config.model_dump_json()), name=name,
              route_prefix=f"/{name}")
    base = f"{serve_http}/{name}"
    try:
        assert ss.recovers(base, {}, 120) is not None, "the two-replica app never answered"
        assert ss.wait_replicas(ray_local, name, 2, 120) == 2
        check_record(ss.replica_killed(ray_local, base, clients=8, seconds=30))
    finally:
        serve.delete(name)


@pytest.mark.slow
@pytest.mark.reliability
def test_proxy_killed_under_load(ray_local, serve_http, tiny_checkpoint, check_record):
    from ray import serve

    from treasure.serving.app import make_deployment
    from treasure.serving.config import ServeConfig

    name = f"reliability_proxy_{os.getpid()}"
    config = ServeConfig(checkpoint=str(tiny_checkpoint), engine="transformers", num_cpus=0.25, default_max_tokens=8, max_tokens_limit=8)
    serve.run(make_deployment(config).bind(config.model_dump_json()), name=name, route_prefix=f"/{name}")
    base = f"{serve_http}/{name}"
    try:
        assert ss.recovers(base, {}, 120) is not None, "the app never answered"
        check_record(ss.proxy_killed(ray_local, base, clients=8, seconds=30))
    finally:
        serve.delete(name)
