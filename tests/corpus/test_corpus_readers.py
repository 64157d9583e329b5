"""Each reader on the real bundled files (and the real PyPI-packaged chit-chat data), plus edge cases."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from treasure.corpus.config import AlpacaZhSource, ArenaHardSource, ChitchatSource, SelfInstructSource
from treasure.corpus.schema import ParsedRecord, Rejected
from treasure.corpus.sources import read_alpaca_zh, read_arena_hard, read_self_instruct


@pytest.fixture(scope="module")
def data(repo):
    return str(repo / "data")


def lines(path) -> list[dict]:
    # split on "\n" only: JSON strings may hold U+2028, which str.splitlines() would split on
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


def test_arena_hard_joins_every_question_with_its_answer(data, repo):
    got = read_arena_hard(ArenaHardSource(type="arena-hard"), data)
    questions = lines(repo / "data/arena-hard-v2.0/question.jsonl")
    assert all(isinstance(i, ParsedRecord) for i in got.items) and len(got.items) == len(questions)
    by_uid = {i.metadata["uid"]: i for i in got.items}
    q = questions[0]
    assert by_uid[q["uid"]].prompt == q["prompt"] and by_uid[q["uid"]].metadata["subcategory"] == q["subcategory"]
    answers = {a["uid"]: a for a in lines(repo / "data/arena-hard-v2.0/answers-o3-mini-2025-01-31.jsonl")}
    assert by_uid[q["uid"]].response == answers[q["uid"]]["messages"][-1]["content"]["answer"]
    assert Counter(i.metadata["subcategory"] for i in got.items) == Counter(q["subcategory"] for q in questions)
    assert Counter(i.metadata.get("domain_hint") for i in got.items)["Code"] == sum(
        q["subcategory"] == "coding" for q in questions)
    assert [f["uri"].rsplit("/", 1)[-1] for f in got.lineage["files"]] == [
        "answers-o3-mini-2025-01-31.jsonl", "question.jsonl"]


def test_arena_hard_unjoined_records_are_reported(tmp_path):
    q = [{"uid": "a", "category": "c", "subcategory": "math", "prompt": "p1"},
         {"uid": "b", "category": "c", "subcategory": "math", "prompt": "p2"}]
    a = [{"uid": "a", "model": "m", "messages": [{"role": "user", "content": "p1"}, {"role": "assistant", "content": "plain"}]},
         {"uid": "z", "model": "m", "messages": [{"role": "assistant", "content": {"answer": "orphan"}}]},
         {"uid": "a", "model": "m", "messages": [{"role": "assistant", "content": "again"}]}]
    (tmp_path / "question.jsonl").write_text("\n".join(json.dumps(x) for x in q))
    (tmp_path / "answers.jsonl").write_text("\n".join(json.dumps(x) for x in a))
    got = read_arena_hard(ArenaHardSource(type="arena-hard", path=str(tmp_path), answers="answers.jsonl"), "unused")
    assert [(i.record, i.response) for i in got.items if isinstance(i, ParsedRecord)] == [("question.jsonl:1", "plain")]
    reasons = sorted((i.record, i.reason) for i in got.items if isinstance(i, Rejected))
    assert reasons == [("answers.jsonl:2", "answer for a uid with no question"),
                       ("answers.jsonl:3", "second answer for this uid"),
                       ("question.jsonl:2", "no answer for this uid")]


def test_alpaca_zh_prompt_is_instruction_plus_input(data, repo):
    raw = json.loads((repo / "data/alpaca-zh/alpaca_zh_10000.json").read_text(encoding="utf-8"))
    got = read_alpaca_zh(AlpacaZhSource(type="alpaca-zh"), data)
    assert len(got.items) == len(raw) and all(isinstance(i, ParsedRecord) for i in got.items)
    k = next(n for n, r in enumerate(raw) if r["input"].strip())
    item = got.items[k]
    assert item.prompt == f"{raw[k]['instruction'].strip()}\n\n{raw[k]['input'].strip()}" and item.response == raw[k]["output"]
    assert item.language == "Chinese" and item.metadata["source_kind"] == "Translation" and item.metadata["has_input"]
    assert item.record == f"alpaca_zh_10000.json[{k}]"


def test_self_instruct_one_row_per_instance(data, repo):
    raw = lines(repo / "data/self-instruct/user_oriented_instructions.jsonl")
    got = read_self_instruct(SelfInstructSource(type="self-instruct"), data)
    assert len(got.items) == sum(len(r["instances"]) for r in raw)
    first = got.items[0]
    assert first.prompt.startswith(raw[0]["instruction"]) and first.prompt.endswith(raw[0]["instances"][0]["input"])
    assert first.metadata["motivation_app"] == raw[0]["motivation_app"] and first.language == "English"


def test_chitchat_pairs_every_consecutive_turn_of_the_packaged_data(data):
    import chitchat_dataset

    from treasure.corpus.chitchat import read_chitchat

    convs = chitchat_dataset.Dataset()  # the package's own API gives the expected counts
    got = read_chitchat(ChitchatSource(type="chitchat"), data)
    assert got.stats["conversations"] == len(convs)
    assert len(got.items) == sum(len(c["messages"]) - 1 for c in convs.values() if c["messages"])
    assert got.stats["single_turn_conversations"] == sum(len(c["messages"]) == 1 for c in convs.values())
    conv_id, conv = next((k, c) for k, c in convs.items() if len(c["messages"]) > 2)
    pair = next(i for i in got.items if i.record == f"dataset.json:{conv_id}#1")
    assert pair.prompt == "\n".join(u["text"].strip() for u in conv["messages"][0] if u["text"].strip())
    assert pair.metadata["domain_hint"] == "Conversation" and pair.metadata["style"] == "Informal"
    assert got.lineage["package"].startswith("chitchat_dataset ")


def test_chitchat_reads_a_file_in_the_package_format(tmp_path):
    from treasure.corpus.chitchat import read_chitchat

    convs = {
        "c1": {"messages": [[{"text": "hi"}, {"text": "there"}], [{"text": "hello"}], [{"text": "bye"}]], "prompt": "p"},
        "c2": {"messages": [[{"text": "alone"}]]},
        "c3": {"messages": [[{"text": "ok"}], [{"text": 7}]]},
        "c4": "not a conversation",
    }
    (tmp_path / "chat.json").write_text(json.dumps(convs))
    got = read_chitchat(ChitchatSource(type="chitchat", path="chat.json"), str(tmp_path))
    assert [(i.prompt, i.response) for i in got.items if isinstance(i, ParsedRecord)] == [("hi\nthere", "hello"), ("hello", "bye")]
    assert sorted(i.record for i in got.items if isinstance(i, Rejected)) == ["chat.json:c3#1", "chat.json:c4"]
    assert got.stats == {"conversations": 4, "single_turn_conversations": 1}


def test_hostile_json_lines_are_error_rows_not_an_aborted_stage():
    from treasure.corpus.readers import json_array_records, jsonl_records
    from treasure.corpus.schema import Rejected

    lines = b'{"a": 1}\n' + b"[" * 5000 + b"]" * 5000 + b'\n{"n": ' + b"9" * 5000 + b'}\n{"b": 2}\n'
    out = list(jsonl_records(lines, "f"))
    assert [o[0] if isinstance(o, tuple) else o.record for o in out] == ["f:1", "f:2", "f:3", "f:4"]
    assert [isinstance(o, Rejected) for o in out] == [False, True, True, False]
    assert "too deeply" in out[1].reason and "JSON not accepted" in out[2].reason
    (whole,) = list(json_array_records(b"[" * 5000 + b"]" * 5000, "g"))
    assert isinstance(whole, Rejected) and "too deeply" in whole.reason
