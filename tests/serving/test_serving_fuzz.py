"""Schema fuzzing of the live app (schemathesis over its OpenAPI document): no input may cause a
server error, and every answer must be JSON or SSE. Slow: run with `make test-slow`."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

# Set in the replicas' environment by the session's Ray (tests/conftest.py).
TOKEN = "test-token-not-a-secret"
TOKEN_ENV = "TREASURE_SERVE_TEST_TOKEN"


@pytest.mark.slow
def test_no_input_causes_a_server_error(serve_app):
    base = serve_app(auth_token_env=TOKEN_ENV, api_docs=True, max_tokens_limit=8, default_max_tokens=4, max_prompt_tokens=128)
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    seen = []
    for result in schema.get_all_operations():
        op = result.ok()

        @given(case=op.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case):
            response = case.call(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
            seen.append(response.status_code)
            assert response.status_code < 500 or response.status_code == 503, (response.status_code, response.text[:300])
            kind = response.headers.get("content-type", "")
            kind = kind[0] if isinstance(kind, list) else kind  # schemathesis 4 keeps header values as lists
            assert kind.startswith(("application/json", "text/event-stream")), kind

        check()
    assert len(seen) >= 4 * 10
