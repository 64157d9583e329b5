"""Request and response schemas of the HTTP API (pydantic), OpenAI-compatible where it claims to be.

Every endpoint is strict about its top-level fields: a field this server does not honour is a 422
that names it, never silently ignored (an ignored `tools`, `response_format` or `logit_bias` would
return an answer that looks right and is not what was asked). The OpenAI endpoints take the OpenAI
fields listed below plus our `markers` extension (the openai client's `extra_body`); `user` and
`stream_options` are accepted (usage always comes in a stream's last chunk). Message objects
ignore fields they do not need (`name`, ...).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Deepest JSON nesting a request body may have: the deepest valid request (a content-part array in a
# message in `messages`) nests 4 levels; deeper bodies are refused before parsing (422).
MAX_JSON_DEPTH = 32

# Marker values arrive as JSON scalars; the taxonomy canonicalizes them to strings.
MarkerValue = str | int | float


class SamplingFields(BaseModel):
    """Sampling parameters shared by both endpoints."""

    max_tokens: int | None = Field(None, ge=1, description="Most tokens to generate (bounded by the server's max_tokens_limit).")
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="0 = greedy.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    seed: int | None = Field(None, ge=0, le=2**31 - 1, description="Sampling seed (per request).")
    stop: str | list[str] | None = Field(None, description="Up to 4 strings; the answer ends before the first one "
                                         "(matched in the visible answer, never inside the marker block).")

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, v):
        stops = [v] if isinstance(v, str) else list(v or [])
        if len(stops) > 4 or any(not s or len(s) > 128 for s in stops):
            raise ValueError("stop takes at most 4 non-empty strings of at most 128 characters")
        return stops


class GenerateRequest(SamplingFields):
    """POST /v1/generate."""

    model_config = ConfigDict(extra="forbid")
    prompt: str = Field(min_length=1, description="The user's text.")
    markers: dict[str, MarkerValue] = Field(default_factory=dict, description="Markers to fix; the model infers the rest.")
    stream: bool = Field(False, description="Stream the answer as server-sent events.")


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class MarkerReport(BaseModel):
    """What the caller fixed and what the model wrote for the categories it was free to choose."""

    requested: dict[str, str]
    inferred: dict[str, str]


class GenerateResponse(BaseModel):
    text: str
    markers: MarkerReport
    finish_reason: str
    usage: Usage
    model: str


class ContentPart(BaseModel):
    """One part of an OpenAI content array; this server reads text parts only."""

    model_config = ConfigDict(extra="ignore")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[ContentPart] | None = None

    @property
    def text(self) -> str | None:
        """The message's text: a string as is, text parts joined (other part types are refused upstream)."""
        if isinstance(self.content, list):
            return "".join(p.text or "" for p in self.content if p.type == "text")
        return self.content


class StreamOptions(BaseModel):
    """OpenAI's `stream_options`: usage always comes in a stream's last chunk here, asked or not."""

    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class ChatCompletionRequest(SamplingFields):
    """POST /v1/chat/completions (the OpenAI fields this server honours, plus `markers`)."""

    model_config = ConfigDict(extra="forbid")
    model: str | None = Field(None, description="Ignored beyond echoing: one model per server.")
    user: str | None = Field(None, max_length=256, description="OpenAI's end-user id: accepted, not used.")
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = Field(None, description="Accepted; usage is always in the last chunk.")
    n: int = Field(1, ge=1, le=8, description="Choices to generate (each with its own seed: seed, seed+1, ...).")
    max_completion_tokens: int | None = Field(None, ge=1, description="OpenAI's newer name for max_tokens.")
    logprobs: bool = Field(False, description="Return each answer token's log-probability (engine: vllm; not with stream).")
    top_logprobs: int | None = Field(None, ge=0, le=5, description="With logprobs: this many most likely alternatives per token.")
    markers: dict[str, MarkerValue] = Field(default_factory=dict, description="Markers to fix (extra body field).")


class CompletionRequest(SamplingFields):
    """POST /v1/completions: the prompt is the user's text, answered as one chat turn under the markers.

    The marker layer lives in the chat template (the block rides in the user turn and opens the
    assistant's answer), so a raw-text continuation would bypass it: a prompt here is a user turn.
    """

    model_config = ConfigDict(extra="forbid")
    model: str | None = Field(None, description="Ignored beyond echoing: one model per server.")
    user: str | None = Field(None, max_length=256, description="OpenAI's end-user id: accepted, not used.")
    prompt: str = Field(min_length=1, description="The user's text (one prompt per request).")
    stream: bool = False
    stream_options: StreamOptions | None = Field(None, description="Accepted; usage is always in the last chunk.")
    n: int = Field(1, ge=1, le=8, description="Choices to generate (seeds seed, seed+1, ...).")
    logprobs: int | None = Field(None, ge=0, le=5, description="Return answer tokens' log-probabilities and this many "
                                 "alternatives per token (engine: vllm; not with stream).")
    markers: dict[str, MarkerValue] = Field(default_factory=dict, description="Markers to fix (extra body field).")


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """Every error answer, OpenAI-style, so the openai client surfaces the message."""

    error: ErrorBody
