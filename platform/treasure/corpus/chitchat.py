"""Reader of the Chit-Chat Challenge conversations (PyPI `chitchat_dataset`, MIT) as turn pairs.

The package ships one `dataset.json`: {conversation id: {"messages": [turn, ...], "prompt": starter,
"ratings": {...}}}, where a turn is a list of utterances {"text", "sender", "timestamp"} by one
speaker. Every pair of consecutive turns is one record: the earlier turn is the prompt, the next
the response, utterances joined by newlines. A conversation of one turn has no pair; it is
counted in the source's stats (`single_turn_conversations`), not as a record.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from treasure.corpus.config import ChitchatSource
from treasure.corpus.readers import decode
from treasure.corpus.schema import ParsedRecord, Rejected
from treasure.corpus.sources import BadRecord, Item, SourceInput, raw_json, read_file, resolve

HINTS = {"domain_hint": "Conversation", "task_hint": "OpenEnded", "style": "Informal", "source_kind": "Human"}


def package_file() -> str:
    spec = importlib.util.find_spec("chitchat_dataset")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("chitchat_dataset is not installed: `pip install chitchat-dataset==0.9.0`")
    return str(Path(spec.origin).parent / "dataset.json")


def turn_text(turn, where: str) -> str:
    if not isinstance(turn, list) or not all(isinstance(u, dict) and isinstance(u.get("text"), str) for u in turn):
        raise BadRecord(f"wrong type: {where} must be a list of {{text: string}} utterances")
    return "\n".join(u["text"].strip() for u in turn if u["text"].strip())


def conversation_pairs(conv_id: str, conv, label: str) -> tuple[list[Item], bool]:
    """(items for every consecutive turn pair, whether the conversation had a single turn)."""
    turns = conv.get("messages") if isinstance(conv, dict) else None
    if not isinstance(turns, list):
        return [Rejected(label, "wrong type: conversation has no list of messages", raw_json(conv)[:2000])], False
    ratings = conv.get("ratings")
    metadata = {"conversation_id": conv_id, "conversation_prompt": conv.get("prompt"),
                "ratings": ratings if isinstance(ratings, dict) else None, **HINTS}
    items: list[Item] = []
    for i in range(1, len(turns)):
        where = f"{label}#{i}"
        try:
            prompt, response = turn_text(turns[i - 1], f"turn {i - 1}"), turn_text(turns[i], f"turn {i}")
        except BadRecord as e:
            items.append(Rejected(where, str(e), raw_json(turns[i - 1: i + 1])))
            continue
        items.append(ParsedRecord(where, prompt, response, "English", {**metadata, "turn": i}))
    return items, len(turns) == 1


def read_chitchat(cfg: ChitchatSource, root: str) -> SourceInput:
    lineage: dict = {}
    uri = resolve(root, cfg.path) if cfg.path else package_file()
    name = uri.rsplit("/", 1)[-1]
    try:
        data = json.loads(decode(read_file(uri, lineage)))
    except json.JSONDecodeError as e:
        return SourceInput([Rejected(name, f"invalid JSON file: {e.msg} at line {e.lineno}", "")], lineage)
    if not isinstance(data, dict):
        return SourceInput([Rejected(name, "wrong type: expected an object of conversations", "")], lineage)
    items: list[Item] = []
    single = 0
    for conv_id, conv in data.items():
        pairs, one_turn = conversation_pairs(conv_id, conv, f"{name}:{conv_id}")
        items += pairs
        single += one_turn
    if not cfg.path:
        lineage["package"] = "chitchat_dataset " + _version("chitchat_dataset")
    return SourceInput(items, lineage, stats={"conversations": len(data), "single_turn_conversations": single})


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist.replace("_", "-"))
