"""From a request to a user turn, and from raw model text back to a clean answer plus markers.

- `validate_requested`: check requested markers against the served taxonomy, collecting every
  problem with the allowed values (the API answers 422 with them).
- `request_for_prompt` / `request_for_chat`: (user turn, assistant prefix) through
  `treasure.template.render_request`, the one rendering function evaluation uses too: user text
  neutralized (marker-like tags defanged), the block of requested markers appended, and with
  prefill the requested markers written as the start of the model's own block.
- `finish_output`: split a complete raw output into answer and markers; every block the model
  writes is stripped from the answer (a block is never content).
- `BlockStripper`: the same for a stream of text deltas. It buffers until the leading block has
  closed, then releases answer text, holding back only what could still turn into a marker tag
  or trailing whitespace, so the concatenated stream equals the non-streamed answer exactly.
The marker block never reaches the caller: besides the leading block, any marker-like tag the
model writes later in its answer is neutralized the same way user text is.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from typing import Any

from treasure.taxonomy import Taxonomy
from treasure.template import neutralize, render_request, split_output, strip_blocks, tag_padding


class MarkerError(ValueError):
    """Requested markers do not fit the served taxonomy; `problems` name the allowed values."""

    def __init__(self, problems: list[str]):
        super().__init__("invalid markers: " + "; ".join(problems))
        self.problems = problems


class ChatShapeError(ValueError):
    """The chat messages cannot be turned into one user turn."""


def allowed_values(taxonomy: Taxonomy) -> dict[str, Any]:
    """{category: allowed values or a description of the numeric kind} for error messages and /v1/taxonomy."""
    out: dict[str, Any] = {}
    for c in map(taxonomy.category, taxonomy.block_names):  # only what the model reads and writes
        out[c.name] = c.allowed if c.allowed is not None else ("non-negative integer" if c.kind == "int" else "number")
    return out


def validate_requested(markers: dict[str, Any], taxonomy: Taxonomy) -> dict[str, str]:
    """Canonical requested markers in block order; MarkerError listing every bad entry."""
    problems = []
    unknown = [k for k in markers if k not in taxonomy.block_names]
    if unknown:
        problems.append(f"unknown marker categories {unknown}; allowed categories: {taxonomy.block_names}")
    for name, value in markers.items():
        if name in taxonomy.block_names:
            try:
                taxonomy.category(name).validate_value(value)
            except ValueError as e:
                problems.append(str(e))
    if problems:
        raise MarkerError(problems)
    return taxonomy.block_markers(markers)


def request_for_prompt(prompt: str, markers: dict[str, str], taxonomy: Taxonomy, prefill: bool = True) -> tuple[str, str]:
    """(user turn, assistant prefix): neutralized prompt text plus the block of requested markers."""
    return render_request(prompt, markers, taxonomy, prefill=prefill)


def request_for_chat(messages: list[Any], markers: dict[str, str], taxonomy: Taxonomy,
                     prefill: bool = True) -> tuple[str | list[dict[str, str]], str]:
    """(turn, assistant prefix) for chat messages; the turn is the final user text, or with earlier
    turns the whole conversation as chat messages ending with it.

    System/developer text goes before the final user message's text (the models are trained on
    single user turns, without a system role). Earlier user and assistant turns stay as they were
    said, but defanged: every marker block is stripped from earlier assistant turns and marker-like
    tags are neutralized in every turn, so history cannot forge a block (or a chat-template turn)
    that steers the answer. The markers of the request go into the final user turn only.
    """
    for m in messages:
        if isinstance(m.content, list) and any(p.type != "text" for p in m.content):
            kinds = sorted({p.type for p in m.content if p.type != "text"})
            raise ChatShapeError(f"only text content parts are supported (got {kinds})")
    roles = [m.role for m in messages]
    if any(r == "tool" for r in roles) or not roles or roles[-1] != "user":
        raise ChatShapeError(f"give system messages (optional), earlier user/assistant turns (optional) and end with a "
                             f"user message; tool messages are not supported (got roles {roles})")
    system = [m.text for m in messages if m.role in ("system", "developer") and m.text]
    turns = [m for m in messages if m.role in ("user", "assistant")]
    last = turns[-1].text
    if not last:
        raise ChatShapeError("the user message is empty")
    turn, prefix = render_request("\n\n".join(system + [last]), markers, taxonomy, prefill=prefill)
    if len(turns) == 1:
        return turn, prefix
    history = [{"role": m.role,
                "content": neutralize(strip_blocks(m.text or "", taxonomy) if m.role == "assistant" else (m.text or ""), taxonomy)}
               for m in turns[:-1]]
    return history + [{"role": "user", "content": turn}], prefix


@dataclass
class FinishedOutput:
    answer: str
    markers: dict[str, str]
    problems: list[str] = field(default_factory=list)


def finish_output(raw: str, taxonomy: Taxonomy) -> FinishedOutput:
    """Answer (block removed, marker-like tags neutralized, stripped) and the model's markers."""
    parsed = split_output(raw, taxonomy)
    return FinishedOutput(neutralize(strip_blocks(parsed.answer, taxonomy), taxonomy).strip(), parsed.markers, parsed.problems)


def split_inferred(model_markers: dict[str, str], requested: dict[str, str]) -> dict[str, str]:
    """The markers the model chose itself: categories the caller did not fix."""
    return {k: v for k, v in model_markers.items() if k not in requested}


def _is_lt(ch: str) -> bool:
    return unicodedata.normalize("NFKC", ch) == "<"


def _name_char(ch: str) -> bool:
    if unicodedata.category(ch) == "Cf":
        return True
    folded = unicodedata.normalize("NFKC", ch)
    return bool(folded) and all(x.isalnum() or x == "_" for x in folded)


def _pending_tag_start(text: str) -> int:
    """Index of the first '<'-like char whose tag name may still be growing at the end of `text`, else -1.

    Mirrors the scan in `treasure.template.neutralize`: after the bracket come optional spaces,
    an optional '/', optional spaces, then name characters. If that scan reaches the end of the
    text, what comes next decides whether it is a marker tag, so it must be held back.
    """
    n = len(text)
    for i in range(max(0, n - 256), n):
        if not _is_lt(text[i]):
            continue
        j = i + 1
        # Padding is whitespace or invisible format characters, as neutralize's scan reads it.
        while j < n and tag_padding(text[j]):
            j += 1
        if j < n and unicodedata.normalize("NFKC", text[j]) == "/":
            j += 1
        while j < n and tag_padding(text[j]):
            j += 1
        while j < n and _name_char(text[j]):
            j += 1
        if j >= n:
            return i
    return -1


def _drop_closed_blocks(text: str, open_tag: str, close_tag: str) -> str:
    """`text` without its complete blocks; an unclosed block (and what follows it) stays."""
    while (start := text.find(open_tag)) >= 0 and (end := text.find(close_tag, start)) >= 0:
        text = text[:start] + text[end + len(close_tag):]
    return text


class BlockStripper:
    """Turn a stream of raw deltas into answer deltas; `markers` is known once the block closes.

    States: "head" (buffering the leading block, or deciding that there is none), "body" (the
    answer flows). `finish()` returns the final delta and the FinishedOutput; the concatenation of
    everything returned equals `finish_output(raw).answer` for the same raw text.
    """

    def __init__(self, taxonomy: Taxonomy):
        self.taxonomy = taxonomy
        self.open_tag, self.close_tag = f"<{taxonomy.tag}>", f"</{taxonomy.tag}>"
        self.raw = ""
        self.state = "head"
        self.block: bool | None = None  # whether the output opened with a block (known once in "body")
        self.markers: dict[str, str] = {}
        self.problems: list[str] = []
        self._body = ""  # answer text not yet released (raw, un-neutralized)
        self._started = False  # whether any answer text has been released (leading spaces are dropped)

    def feed(self, delta: str) -> str:
        """Add raw text; return the answer text that is now safe to release (maybe '')."""
        self.raw += delta
        if self.state == "head":
            head = self.raw.lstrip()
            if not head:
                return ""
            if head.startswith(self.open_tag):
                end = head.find(self.close_tag)
                if end < 0:
                    return ""  # block still open: hold everything
                parsed = split_output(head[: end + len(self.close_tag)], self.taxonomy)
                self.markers, self.problems, self.block = parsed.markers, parsed.problems, True
                self._body = head[end + len(self.close_tag):]
            elif self.open_tag.startswith(head):
                return ""  # could still become the block's opening tag
            else:
                self.problems, self.block = [f"output does not start with {self.open_tag}"], False
                self._body = head
            self.state = "body"
            return self._release(final=False)
        self._body += delta
        return self._release(final=False)

    @property
    def started(self) -> bool:
        """Whether any answer text has been released yet."""
        return self._started

    def _release(self, final: bool) -> str:
        # Complete blocks inside the answer go (as in finish_output's strip_blocks); an open one is held.
        body = strip_blocks(self._body, self.taxonomy) if final else _drop_closed_blocks(self._body, self.open_tag, self.close_tag)
        if not self._started:
            body = body.lstrip()
        if final:
            out, keep = body.rstrip(), ""
        else:
            cut = len(body.rstrip())  # trailing whitespace waits: it is dropped if the answer ends here
            pending = _pending_tag_start(body[:cut])
            unclosed = body.find(self.open_tag)
            for start in (pending, unclosed):
                if start >= 0:  # whitespace before it waits too: it may open a block that is dropped, ending the answer
                    cut = min(cut, len(body[:start].rstrip()))
            out, keep = body[:cut], body[cut:]
        self._body = keep
        if out:
            self._started = True
        # Every '<' in `out` has its full tag name inside `out`, so neutralizing the piece alone
        # decides exactly as neutralizing the whole answer would.
        return neutralize(out, self.taxonomy)

    def finish(self) -> tuple[str, FinishedOutput]:
        """Flush at end of generation: (last delta, the whole output's FinishedOutput)."""
        done = finish_output(self.raw, self.taxonomy)
        if self.state == "head":
            # Never left the head: an unclosed block (nothing is released) or an answer that is
            # only a prefix of the opening tag / whitespace.
            return done.answer, done
        return self._release(final=True), done
