"""Chat-shaped records → (prompt, response) exchanges: OpenAI `messages` and ShareGPT `conversations`.

A row of the corpus is one user turn and the assistant reply to it. A multi-turn record keeps its
earlier turns (and any system message) in the prompt as a plain transcript, so the model sees the
context the reply was written for:

>>> turns = chat_turns({"messages": [{"role": "system", "content": "Be brief."},
...     {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
...     {"role": "user", "content": [{"type": "text", "text": "Capital of France?"}]},
...     {"role": "assistant", "content": "Paris."}]}, "messages", "messages")
>>> [(k, response) for k, _, response in exchanges(turns, every=True)]
[(2, 'Hello!'), (4, 'Paris.')]
>>> print(exchanges(turns, every=False)[0][1])
System: Be brief.
<BLANKLINE>
User: Hi
<BLANKLINE>
Assistant: Hello!
<BLANKLINE>
User: Capital of France?

A single exchange with no system message is just the user's text. Turns of the same speaker in a
row are joined by a blank line. An assistant turn with no user turn before it (an opening
greeting) is context, not a row. Tool calls, tool results and non-text content parts are errors
of the record (this corpus is text-only), never silently dropped.
"""

from __future__ import annotations

from treasure.corpus.schema import BadRecord

ROLES = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant", "model": "assistant",
         "bot": "assistant", "chatgpt": "assistant", "system": "system"}
LABELS = {"system": "System", "user": "User", "assistant": "Assistant"}
KEYS = {"messages": ("role", "content"), "sharegpt": ("from", "value")}


def content_text(content, where: str) -> str:
    """A message's text: a string, or an array of {type: text, text} parts joined by newlines."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            if kind != "text" or not isinstance(part.get("text"), str):
                raise BadRecord(f"wrong type: {where} has a {kind!r} content part; only text parts are read")
            texts.append(part["text"])
        return "\n".join(texts)
    raise BadRecord(f"wrong type: {where} content is {type(content).__name__}, expected text or text parts")


def chat_turns(obj: dict, field: str, shape: str) -> list[tuple[str, str]]:
    """[(role, text)] of a record's turns, roles normalised to system/user/assistant, same-role runs merged."""
    role_key, text_key = KEYS[shape]
    turns = obj.get(field)
    if not isinstance(turns, list):
        raise BadRecord(f"missing field {field!r}" if turns is None else f"wrong type: {field} is {type(turns).__name__}, expected a list")
    out: list[tuple[str, str]] = []
    for i, turn in enumerate(turns):
        where = f"{field}[{i}]"
        if not isinstance(turn, dict):
            raise BadRecord(f"wrong type: {where} is {type(turn).__name__}, expected an object")
        role = ROLES.get(str(turn.get(role_key)).lower())
        if role is None:
            raise BadRecord(f"unsupported role {turn.get(role_key)!r} in {where} (read: {', '.join(ROLES)})")
        if turn.get("tool_calls"):
            raise BadRecord(f"{where} holds tool calls; only text turns are read")
        text = content_text(turn.get(text_key), where).strip()
        if out and out[-1][0] == role:
            out[-1] = (role, f"{out[-1][1]}\n\n{text}".strip())
        else:
            out.append((role, text))
    return out


def transcript(history: list[tuple[str, str]], user_text: str) -> str:
    """The prompt of one exchange: the user's text alone, or the labelled transcript ending with it."""
    if not history:
        return user_text
    return "\n\n".join(f"{LABELS[role]}: {text}" for role, text in [*history, ("user", user_text)])


def exchanges(turns: list[tuple[str, str]], every: bool) -> list[tuple[int, str, str]]:
    """[(index of the assistant turn, prompt, response)]: every user → assistant pair, or only the last."""
    pairs = [k for k in range(1, len(turns)) if turns[k][0] == "assistant" and turns[k - 1][0] == "user"]
    if not pairs:
        raise BadRecord("no user turn followed by an assistant turn")
    chosen = pairs if every else pairs[-1:]
    return [(k, transcript(turns[: k - 1], turns[k - 1][1]), turns[k][1]) for k in chosen]
