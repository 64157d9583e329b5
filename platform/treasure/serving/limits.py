"""Request limits: body size, prompt tokens and max_tokens, each with a clear error and status.

`LimitError.status` is 413 for an oversized body and 400 for the token bounds, so the HTTP layer
only has to copy it. `BodyLimitMiddleware` enforces the body bound while reading (a missing or
lying Content-Length cannot get past it).
"""

from __future__ import annotations

import json


class LimitError(ValueError):
    """A request exceeds a server limit; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status = status
        self.param = param


def resolve_max_tokens(asked: int | None, default: int, limit: int) -> int:
    """The request's max_tokens, or the default; LimitError(400) above the server's limit."""
    if asked is None:
        return default
    if asked > limit:
        raise LimitError(400, f"max_tokens={asked} exceeds this server's limit of {limit}", param="max_tokens")
    return asked


def check_prompt_tokens(count: int, limit: int) -> None:
    """LimitError(400) when the user turn (markers included) is longer than the server allows."""
    if count > limit:
        raise LimitError(400, f"prompt is {count} tokens long; this server accepts at most {limit}", param="prompt")


def body_too_large(limit: int) -> LimitError:
    return LimitError(413, f"request body exceeds {limit} bytes")


class BodyLimitMiddleware:
    """ASGI middleware: answer 413 as soon as a request body passes `limit` bytes."""

    def __init__(self, app, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await _reject(send, self.limit)
        # Read the whole body up front (it is bounded), so an oversized chunked body is refused
        # before the app sees any of it.
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                return await _reject(send, self.limit)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        delivered = False

        async def replay():
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


async def _reject(send, limit: int) -> None:
    err = body_too_large(limit)
    payload = json.dumps({"error": {"message": str(err), "type": "request_too_large", "param": None, "code": "413"}}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})
