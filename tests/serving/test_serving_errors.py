"""The HTTP error mapping without Ray or Serve: which failure becomes which status, type and param,
and that engine failures show the client an incident id only (the exception goes to the log)."""

from __future__ import annotations

import doctest
import json
import logging
import subprocess
import sys

import pytest
from pydantic import ValidationError

from treasure.json_input import JSONInputError, parse_json
from treasure.serving import errors
from treasure.serving.api_models import ChatCompletionRequest, GenerateRequest
from treasure.serving.auth import AuthError, check_bearer
from treasure.serving.limits import LimitError, body_too_large, check_prompt_tokens, resolve_max_tokens
from treasure.serving.prompting import ChatShapeError, MarkerError, allowed_values, request_for_chat, validate_requested


def raised(fn, *args, **kwargs) -> Exception:
    try:
        fn(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 (the test wants whatever the real code raises)
        return e
    raise AssertionError(f"{fn.__name__} did not raise")


@pytest.fixture
def incident_log():
    """The records the "ray.serve" logger gets (the replica's log), whatever its propagation."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    log = logging.getLogger("ray.serve")
    handler = Keep(level=logging.DEBUG)
    log.addHandler(handler)
    try:
        yield records
    finally:
        log.removeHandler(handler)


def test_docstring_examples_hold():
    assert doctest.testmod(errors).failed == 0


def test_auth_failures_are_401_and_ask_for_a_bearer_token():
    e = raised(check_bearer, None, "secret")
    assert isinstance(e, AuthError)
    answer = errors.request_error(e, None)
    assert answer.status == 401 and answer.headers == {"WWW-Authenticate": "Bearer"}
    assert answer.body == {"error": {"message": str(e), "type": "authentication_error", "param": None, "code": "401"}}
    assert errors.unauthorized(e) == answer  # /v1/models and /v1/taxonomy answer the same


def test_a_body_that_is_not_json_is_422():
    e = errors.unreadable_body(raised(parse_json, b"{not json"))
    answer = errors.request_error(e, None)
    assert answer.status == 422 and answer.headers is None
    assert answer.body["error"]["type"] == "invalid_request_error" and answer.body["error"]["param"] is None
    assert answer.body["error"]["message"].startswith("request body: ") and "not valid JSON" in answer.body["error"]["message"]


def test_too_deep_json_is_422_not_500():
    e = raised(parse_json, "[" * 1000 + "]" * 1000, max_depth=64)
    assert isinstance(e, JSONInputError)
    assert errors.request_error(errors.unreadable_body(e), None).status == 422


def test_schema_problems_are_422_and_name_every_field():
    e = raised(GenerateRequest.model_validate, {"prompt": "x", "temperature": 9, "surprise": 1})
    assert isinstance(e, ValidationError)
    answer = errors.request_error(errors.invalid_body(e), None)
    message = answer.body["error"]["message"]
    assert answer.status == 422 and answer.body["error"]["type"] == "invalid_request_error"
    assert message.startswith("invalid request: ")
    assert "surprise: not a field this endpoint honours" in message and "temperature: " in message


def test_a_missing_body_field_is_named_by_its_path():
    e = raised(ChatCompletionRequest.model_validate, {"max_tokens": 2})
    assert "messages: " in errors.invalid_body(e).args[0]


def test_bad_markers_are_422_with_the_allowed_values(taxonomy):
    e = raised(validate_requested, {"mood": "happy"}, taxonomy)
    assert isinstance(e, MarkerError)
    answer = errors.request_error(e, taxonomy)
    assert answer.status == 422
    assert answer.body["error"]["type"] == "invalid_markers" and answer.body["error"]["param"] == "markers"
    assert "allowed categories" in answer.body["error"]["message"]
    assert answer.body["error"]["allowed"] == allowed_values(taxonomy)
    json.dumps(answer.body)  # the body goes out as JSON as it is


def test_a_chat_that_cannot_become_one_user_turn_is_400_on_messages(taxonomy):
    req = ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": "hi"},
                                                             {"role": "assistant", "content": "hello"}]})
    e = raised(request_for_chat, req.messages, {}, taxonomy)
    assert isinstance(e, ChatShapeError)
    answer = errors.request_error(e, taxonomy)
    assert "end with a user message" in answer.body["error"]["message"]
    assert (answer.status, answer.body["error"]["type"], answer.body["error"]["param"]) == (400, "invalid_request_error", "messages")


@pytest.mark.parametrize("make, status, kind, param", [
    (lambda: body_too_large(2048), 413, "request_too_large", None),
    (lambda: raised(resolve_max_tokens, 49, 4, 48), 400, "invalid_request_error", "max_tokens"),
    (lambda: raised(check_prompt_tokens, 300, 200), 400, "invalid_request_error", "prompt"),
    (lambda: LimitError(400, "stream supports n=1 only", param="n"), 400, "invalid_request_error", "n"),
])
def test_limits_answer_with_their_own_status(make, status, kind, param):
    e = make()
    answer = errors.request_error(e, None)
    assert answer.status == status and answer.body["error"]["code"] == str(status)
    assert answer.body["error"]["type"] == kind and answer.body["error"]["param"] == param
    assert answer.body["error"]["message"] == str(e)


def test_an_input_the_engine_refuses_is_400_on_prompt():
    answer = errors.request_error(ValueError("prompt is longer than the model's context"), None)
    assert (answer.status, answer.body["error"]["type"], answer.body["error"]["param"]) == (400, "invalid_request_error", "prompt")


def test_an_engine_failure_is_503_with_an_incident_id_only(incident_log):
    answer = errors.request_error(RuntimeError("CUDA out of memory at /secret/path"), None)
    message = answer.body["error"]["message"]
    assert answer.status == 503 and answer.body["error"]["type"] == "engine_error"
    assert "secret" not in json.dumps(answer.body) and message.endswith("; retry")
    incident_id = message.split("incident ")[1].split(")")[0]
    assert len(incident_id) == 12
    (record,) = incident_log
    assert incident_id in record.getMessage() and "CUDA out of memory" in record.getMessage()
    assert record.levelno == logging.ERROR and record.exc_info is not None


def test_every_incident_gets_its_own_id(incident_log):
    ids = {errors.incident("generate", RuntimeError("x")) for _ in range(20)}
    assert len(ids) == 20 and len(incident_log) == 20


def test_health_and_stream_failures_carry_the_kind_and_an_incident_only(incident_log):
    health = errors.unhealthy(RuntimeError("engine dead: token=abc"))
    assert health.status == 503 and health.body["error"]["type"] == "engine_unhealthy"
    assert "abc" not in json.dumps(health.body) and "incident " in health.body["error"]["message"]
    event = errors.stream_error(RuntimeError("engine dead: token=abc"))
    assert event["error"]["type"] == "engine_error" and set(event["error"]) == {"message", "type"}
    assert "abc" not in json.dumps(event) and event["error"]["message"].startswith("generation failed (incident ")
    assert [r.getMessage().split(": ")[1] for r in incident_log] == ["health", "stream"]


def test_not_found():
    answer = errors.not_found()
    assert answer.status == 404 and answer.headers is None
    assert answer.body == {"error": {"message": "not found", "type": "not_found", "param": None, "code": "404"}}


def test_extra_fields_join_the_error_object():
    answer = errors.error(422, "bad", "invalid_markers", "markers", allowed={"domain": ["Code"]})
    assert answer.body["error"] == {"message": "bad", "type": "invalid_markers", "param": "markers", "code": "422",
                                    "allowed": {"domain": ["Code"]}}


def test_the_error_mapping_needs_no_ray_or_serve():
    code = "import sys, treasure.serving.errors; print('ray' in sys.modules, 'fastapi' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"
