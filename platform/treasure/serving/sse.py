"""Server-sent events: the wire format of streamed answers (ours and OpenAI's chunk objects)."""

from __future__ import annotations

import json
from typing import Any

DONE = "data: [DONE]\n\n"


def event(data: dict[str, Any]) -> str:
    """One SSE event carrying a JSON object (one line: JSON escapes newlines)."""
    return f"data: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n"


def chat_chunk(chunk_id: str, created: int, model: str, delta: dict[str, Any], finish_reason: str | None = None,
               **extra: Any) -> str:
    """An OpenAI `chat.completion.chunk` event; `extra` adds top-level fields (markers, usage)."""
    body = {"id": chunk_id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}], **extra}
    return event(body)


def completion_chunk(chunk_id: str, created: int, model: str, text: str, finish_reason: str | None = None,
                     **extra: Any) -> str:
    """An OpenAI `text_completion` stream event; `extra` adds top-level fields (markers, usage)."""
    body = {"id": chunk_id, "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}], **extra}
    return event(body)


def parse_events(text: str) -> list[Any]:
    """Parse an SSE body back into its data payloads ('[DONE]' kept as a string): for clients and tests."""
    out: list[Any] = []
    for block in text.split("\n\n"):
        lines = [ln[len("data:"):].strip() for ln in block.splitlines() if ln.startswith("data:")]
        if not lines:
            continue
        data = "\n".join(lines)
        out.append(data if data == "[DONE]" else json.loads(data))
    return out
