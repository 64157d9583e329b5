"""Schema fuzzing of the live app (schemathesis over its OpenAPI document): no input may cause a
server error, and every answer must be JSON or SSE. Slow: run with `make test-slow`."""

from __future__ import annotations

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

TOKEN = "fuzz-token-not-a-secret"
TOKEN_ENV = "TREASURE_SERVE_FUZZ_TOKEN"


@pytest.fixture(scope="module")
def fuzz_base(serve_app):
    os.environ[TOKEN_ENV] = TOKEN
    return serve_app(auth_token_env=TOKEN_ENV, max_tokens_limit=8, default_max_tokens=4, max_prompt_tokens=128)


@pytest.fixture(scope="module")
def api_schema(fuzz_base):
    return schemathesis.openapi.from_url(f"{fuzz_base}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.mark.slow
@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_input_causes_a_server_error(case, fuzz_base):
    response = case.call(base_url=fuzz_base, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
    assert response.status_code < 500 or response.status_code == 503, (response.status_code, response.text[:300])
    kind = response.headers.get("content-type", "")
    assert kind.startswith("application/json") or kind.startswith("text/event-stream"), kind
