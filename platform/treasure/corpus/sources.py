"""Readers of file sources: Arena-Hard, Alpaca-zh, Self-Instruct and any user file with a field mapping.

A reader takes its source config and the `input` root and returns `SourceInput`: every input record
as a `ParsedRecord` or a `Rejected`, plus the lineage of what it read (URIs and sha256 of the bytes).
Paths are local paths or s3:// URIs (read through `treasure.storage`). Raw per-source fields go
into `metadata`, together with hints the metadata annotator maps to markers; docs/corpus.md lists
them. Hints use taxonomy spelling: `domain_hint`, `task_hint`, `source_kind`, `style`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Union

from treasure import storage
from treasure.corpus.config import AlpacaZhSource, ArenaHardSource, FileSource, SelfInstructSource
from treasure.corpus import conversations
from treasure.corpus.readers import format_of, records
from treasure.corpus.schema import BadRecord, ParsedRecord, Rejected

Item = Union[ParsedRecord, Rejected]


@dataclass
class SourceInput:
    """What one reader produced: one item per input record, and the lineage of the bytes it read."""

    items: list[Item]
    lineage: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, int] = field(default_factory=dict)  # source-specific counts for the manifest


def resolve(root: str, path: str) -> str:
    """`path` itself when absolute or a URI, else `path` under the `input` root."""
    if "://" in path or path.startswith("/"):
        return path
    return storage.join(root, path)


def read_file(uri: str, lineage: dict) -> bytes:
    """The bytes at `uri`; records the URI and checksum in `lineage["files"]`."""
    data = storage.read_bytes(uri)
    lineage.setdefault("files", []).append({"uri": uri, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)})
    return data


def text_of(obj: dict, name: str, required: bool = True) -> str | None:
    """Field `name` as text: a string (maybe empty); None when absent or null and not required."""
    value = obj
    for part in name.split("."):  # dotted names reach into nested objects
        if not isinstance(value, dict) or part not in value:
            if required:
                raise BadRecord(f"missing field {name!r}")
            return None
        value = value[part]
    if value is None:
        if required:
            raise BadRecord(f"missing field {name!r} (null)")
        return None
    if not isinstance(value, str):
        raise BadRecord(f"wrong type: field {name!r} is {type(value).__name__}, expected a string")
    return value


def join_text(parts: Iterable[str | None]) -> str:
    """Non-empty parts joined by a blank line (an Alpaca `instruction` then its `input`)."""
    return "\n\n".join(p.strip() for p in parts if p and p.strip())


def raw_json(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, default=str)


def map_records(parsed: Iterable, build: Callable[[str, dict], ParsedRecord | list[ParsedRecord]]) -> list[Item]:
    """Apply `build` to each parsed record; a `BadRecord` becomes a `Rejected` with the raw record."""
    items: list[Item] = []
    for rec in parsed:
        if isinstance(rec, Rejected):
            items.append(rec)
            continue
        label, obj = rec
        try:
            built = build(label, obj)
        except BadRecord as e:
            items.append(Rejected(label, str(e), raw_json(obj)))
            continue
        items.extend(built if isinstance(built, list) else [built])
    return items


# --- Arena-Hard-Auto v2.0: questions joined with one model's answers by uid ------------------------

ARENA_HINTS = {  # subcategory -> hints the source itself declares
    "coding": {"domain_hint": "Code"},
    "math": {"domain_hint": "Math"},
    "creative_writing": {"task_hint": "CreativeWriting"},
}


def assistant_answer(obj: dict) -> str:
    """The last assistant message's text; its content may be a string or {"answer": str}."""
    messages = obj.get("messages")
    if not isinstance(messages, list):
        raise BadRecord("wrong type: messages is not a list")
    replies = [m for m in messages if isinstance(m, dict) and m.get("role") == "assistant"]
    if not replies:
        raise BadRecord("no assistant message")
    content = replies[-1].get("content")
    if isinstance(content, dict):
        content = content.get("answer")
    if not isinstance(content, str):
        raise BadRecord(f"wrong type: assistant content is {type(content).__name__}, expected text or {{answer: text}}")
    return content


def read_arena_hard(cfg: ArenaHardSource, root: str) -> SourceInput:
    """Records: every question line, plus every answer line no question used (each an error row)."""
    lineage: dict = {}
    folder = resolve(root, cfg.path)
    answers: dict[str, tuple[str, str, Any]] = {}  # uid -> (record label, answer text, model)
    items: list[Item] = []

    def take_answer(label: str, obj: dict) -> list:
        uid = text_of(obj, "uid")
        if uid in answers:
            raise BadRecord("second answer for this uid")
        answers[uid] = (label, assistant_answer(obj), obj.get("model"))
        return []

    items += map_records(records(read_file(storage.join(folder, cfg.answers), lineage), cfg.answers), take_answer)

    def build(label: str, obj: dict) -> ParsedRecord:
        uid = text_of(obj, "uid")
        if uid not in answers:
            raise BadRecord("no answer for this uid")
        _, answer, model = answers.pop(uid)
        category, sub = text_of(obj, "category", False), text_of(obj, "subcategory", False)
        metadata = {"uid": uid, "category": category, "subcategory": sub, "response_model": model,
                    "source_kind": "Synthetic", **ARENA_HINTS.get(sub or "", {})}
        return ParsedRecord(label, obj.get("prompt"), answer, None, metadata)

    items += map_records(records(read_file(storage.join(folder, cfg.questions), lineage), cfg.questions), build)
    # Answers left over matched no question: reported, not dropped.
    items += [Rejected(label, "answer for a uid with no question", raw_json({"uid": uid, "answer": text}))
              for uid, (label, text, _) in answers.items()]
    return SourceInput(items, lineage)


# --- Alpaca-zh and user files: one record -> one row through a field mapping ---------------------

HF_MARKERS = ("dataset_dict.json", "state.json")  # what `save_to_disk` writes at a saved dataset's root


def saved_dataset_files(folder: str, split: str | None) -> list[tuple[str, str]]:
    """(URI, path below `folder`) of the Arrow data files of a saved HF `datasets` folder (a Dataset
    or a DatasetDict), in order."""
    splits: list[str] = [""]
    if storage.exists(storage.join(folder, "dataset_dict.json")):
        splits = json.loads(storage.read_bytes(storage.join(folder, "dataset_dict.json")))["splits"]
        if split is not None and split not in splits:
            raise ValueError(f"{folder}: no split {split!r} (splits: {splits})")
        splits = [split] if split is not None else splits
    elif split is not None:
        raise ValueError(f"{folder}: a single saved Dataset has no splits; drop `split`")
    files = []
    for name in splits:
        base = storage.join(folder, name) if name else folder
        state = json.loads(storage.read_bytes(storage.join(base, "state.json")))
        files += [(storage.join(base, f["filename"]), f"{name}/{f['filename']}".lstrip("/")) for f in state["_data_files"]]
    return files


def file_units(cfg: FileSource, root: str) -> list[tuple[str, str]]:
    """(URI, record label prefix) of every file `cfg.path` names, in a stable order; see FileSource.
    Files found under a folder or glob are labelled by their path below it (`train/part-0.jsonl`)."""
    uri = resolve(root, cfg.path)
    saved = cfg.format == "hf-datasets" or (
        cfg.format == "auto" and not any(c in uri for c in storage.GLOB_CHARS)
        and any(storage.exists(storage.join(uri, m)) for m in HF_MARKERS))
    if saved:
        return saved_dataset_files(uri, cfg.split)
    files = storage.expand(uri)
    for file, _ in files:  # an unreadable name fails the plan, before any reading starts
        format_of(file, cfg.format)
    return files


def record_builder(cfg: FileSource) -> Callable[[str, dict], ParsedRecord | list[ParsedRecord]]:
    """record -> ParsedRecord(s) through the source's field mapping or conversation shape."""

    def common(obj: dict) -> tuple[str | None, dict]:
        language = (text_of(obj, cfg.language_field, False) if cfg.language_field else None) or cfg.language
        return language, {**cfg.metadata, **{name: obj.get(name) for name in cfg.metadata_fields}}

    def fields(label: str, obj: dict) -> ParsedRecord:
        prompt = join_text(text_of(obj, f, required=(i == 0)) for i, f in enumerate(cfg.prompt))
        language, metadata = common(obj)
        return ParsedRecord(label, prompt, text_of(obj, cfg.response), language, metadata)

    def chat(label: str, obj: dict) -> list[ParsedRecord]:
        field = cfg.conversation or ("messages" if cfg.shape == "messages" else "conversations")
        turns = conversations.chat_turns(obj, field, cfg.shape)
        language, metadata = common(obj)
        return [ParsedRecord(f"{label}#{k}", prompt, response, language, {**metadata, "turn": k, "turns": len(turns)})
                for k, prompt, response in conversations.exchanges(turns, every=cfg.turns == "every")]

    return fields if cfg.shape == "fields" else chat


def read_file_source(cfg: FileSource, root: str, unit: tuple[str, str] | None = None) -> SourceInput:
    """The items of one file of a file source (`unit` from `file_units`; default: its only file)."""
    lineage: dict = {}
    if unit is None:
        units = file_units(cfg, root)
        if len(units) != 1:
            raise ValueError(f"{cfg.path}: names {len(units)} files; read them one unit at a time")
        unit = units[0]
    uri, label = unit
    fmt = "arrow" if cfg.format == "hf-datasets" else cfg.format
    label = label[:-3] if label.endswith(".gz") else label
    return SourceInput(map_records(records(read_file(uri, lineage), uri, fmt, label), record_builder(cfg)), lineage)


def alpaca_zh_mapping(cfg: AlpacaZhSource) -> FileSource:
    """Alpaca-zh is a user file with a fixed mapping: instruction + input -> prompt, output -> response."""
    return FileSource(
        type="file", path=cfg.path, format="json", prompt=["instruction", "input"], response="output",
        language="Chinese",
        # Machine-translated Alpaca (whose English answers were model-generated): source marker Translation.
        metadata={"source_kind": "Translation"},
    )


def read_alpaca_zh(cfg: AlpacaZhSource, root: str) -> SourceInput:
    result = read_file_source(alpaca_zh_mapping(cfg), root)
    for i, item in enumerate(result.items):
        if isinstance(item, ParsedRecord):  # record whether the prompt has an input part (task shape)
            result.items[i] = ParsedRecord(item.record, item.prompt, item.response, item.language,
                                        {**item.metadata, "has_input": "\n\n" in item.prompt})
    return result


# --- Self-Instruct user-oriented instructions: one row per instance -----------------------------

def read_self_instruct(cfg: SelfInstructSource, root: str) -> SourceInput:
    lineage: dict = {}
    uri = resolve(root, cfg.path)

    def build(label: str, obj: dict) -> list[ParsedRecord]:
        instruction = text_of(obj, "instruction")
        instances = obj.get("instances")
        if not isinstance(instances, list) or not instances:
            raise BadRecord("wrong type: instances must be a non-empty list")
        metadata = {"task_id": obj.get("id"), "motivation_app": obj.get("motivation_app"), "source_kind": "Human"}
        out = []
        for k, inst in enumerate(instances):
            if not isinstance(inst, dict):
                raise BadRecord(f"wrong type: instance {k} is {type(inst).__name__}")
            prompt = join_text([instruction, text_of(inst, "input", False)])
            out.append(ParsedRecord(f"{label}#{k}", prompt, text_of(inst, "output"), "English", metadata))
        return out

    return SourceInput(map_records(records(read_file(uri, lineage), uri), build), lineage)
