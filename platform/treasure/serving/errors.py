"""What a failure looks like on the wire: HTTP status plus an OpenAI-style error body.

Plain functions, no Ray or Serve; `treasure.serving.app` answers with what they return. A client
sees a failure's kind and, for engine failures, an incident id; the exception itself goes to the
replica's log under that id (health answers, stream error events and 503 bodies never carry it).

>>> from treasure.serving.limits import LimitError
>>> answer = request_error(LimitError(400, "max_tokens=9 exceeds this server's limit of 8", param="max_tokens"), None)
>>> answer.status, answer.body["error"]["type"], answer.body["error"]["param"], answer.body["error"]["code"]
(400, 'invalid_request_error', 'max_tokens', '400')
>>> error(401, "missing bearer token", "authentication_error").headers
{'WWW-Authenticate': 'Bearer'}
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from treasure.json_input import JSONInputError
from treasure.serving.auth import AuthError
from treasure.serving.limits import LimitError
from treasure.serving.prompting import ChatShapeError, MarkerError, allowed_values

logger = logging.getLogger("ray.serve")  # the replica's log, where Serve writes its own


class BadBody(ValueError):
    """The body is not JSON or does not match the endpoint's schema (422)."""


@dataclass(frozen=True)
class ErrorAnswer:
    """One error answer: status code, JSON body, extra headers (None: none)."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] | None = None


def error(status: int, message: str, kind: str, param: str | None = None, **extra: Any) -> ErrorAnswer:
    """The OpenAI-style error answer: ``{"error": {message, type, param, code, **extra}}``; a 401 asks for a Bearer token."""
    body = {"error": {"message": message, "type": kind, "param": param, "code": str(status), **extra}}
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return ErrorAnswer(status, body, headers)


def incident(what: str, e: BaseException) -> str:
    """Log `e` under a fresh incident id (the replica's log) and return the id for the client."""
    incident_id = uuid.uuid4().hex[:12]
    logger.error("incident %s: %s: %s: %s", incident_id, what, type(e).__name__, e, exc_info=e)
    return incident_id


def unreadable_body(e: JSONInputError) -> BadBody:
    """A body that is not acceptable JSON (invalid, not UTF-8, too deep, a number too long): 422, never a 500."""
    return BadBody(f"request body: {e}")


def invalid_body(e: ValidationError) -> BadBody:
    """A JSON body the endpoint's schema refuses; every problem named by its field path."""
    problems = [f"{'.'.join(str(p) for p in err['loc']) or 'body'}: "
                + ("not a field this endpoint honours" if err["type"] == "extra_forbidden" else err["msg"])
                for err in e.errors()]
    return BadBody("invalid request: " + "; ".join(problems))


def unauthorized(e: AuthError) -> ErrorAnswer:
    return error(401, str(e), "authentication_error")


def not_found() -> ErrorAnswer:
    return error(404, "not found", "not_found")


def request_error(e: Exception, taxonomy) -> ErrorAnswer:
    """The answer to a generation request that raised `e` (`taxonomy`: the served one, named in marker errors).

    The client's fault is a 4xx naming the field; anything else is an engine failure: 503 with an
    incident id (retry; the health check replaces a broken replica).
    """
    if isinstance(e, AuthError):
        return unauthorized(e)
    if isinstance(e, BadBody):
        return error(422, str(e), "invalid_request_error")
    if isinstance(e, MarkerError):
        return error(422, str(e), "invalid_markers", "markers", allowed=allowed_values(taxonomy))
    if isinstance(e, ChatShapeError):
        return error(400, str(e), "invalid_request_error", "messages")
    if isinstance(e, LimitError):
        return error(e.status, str(e), "request_too_large" if e.status == 413 else "invalid_request_error", e.param)
    if isinstance(e, ValueError):  # the engine refused this request's input (e.g. a prompt past the context)
        return error(400, str(e), "invalid_request_error", "prompt")
    return error(503, f"generation failed (incident {incident('generate', e)}); retry", "engine_error")


def unhealthy(e: Exception) -> ErrorAnswer:
    """The /healthz answer when the engine check fails: 503 with an incident id only."""
    return error(503, f"engine unhealthy (incident {incident('health', e)})", "engine_unhealthy")


def stream_error(e: Exception) -> dict[str, Any]:
    """The in-band SSE error event of a stream whose headers already went out (then the stream ends)."""
    return {"error": {"message": f"generation failed (incident {incident('stream', e)})", "type": "engine_error"}}
