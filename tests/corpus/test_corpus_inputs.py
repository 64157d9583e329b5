"""Bring-your-own corpus input: folders, globs, CSV, saved HF datasets, chat shapes (pure, no Ray),
and the normalize stage reading many files on Ray Data with the in-memory normalizer as its oracle."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from treasure import storage
from treasure.corpus.config import FileSource, NormalizeConfig
from treasure.corpus.normalize import normalize_source
from treasure.corpus.sources import file_units, read_file_source


def source(path, **fields) -> FileSource:
    defaults = {"prompt": ["q"], "response": "a"} if fields.get("shape", "fields") == "fields" else {}
    return FileSource.model_validate({"type": "file", "path": str(path), **defaults, **fields})


def read_all(cfg: FileSource, root: str = "") -> list:
    """Every item of every file the source names, in unit order (what the stage reads)."""
    return [item for unit in file_units(cfg, root) for item in read_file_source(cfg, root, unit).items]


def jsonl(rows) -> bytes:
    return "\n".join(json.dumps(r) for r in rows).encode()


@pytest.fixture
def sft_mix(tmp_path):
    """A folder of four formats (one gzipped), a hidden file, and a file in a sub-folder."""
    mix = tmp_path / "sft-mix"
    (mix / "more").mkdir(parents=True)
    (mix / "a.jsonl").write_bytes(jsonl([{"q": "one", "a": "1"}, {"q": "two", "a": "2"}]))
    (mix / "b.jsonl.gz").write_bytes(gzip.compress(jsonl([{"q": "three", "a": "3"}])))
    (mix / "c.csv").write_text('q,a\nfour,4\n"five, with a comma","5\nand a second line"\nsix\n')
    pq.write_table(pa.table({"q": ["seven"], "a": ["7"]}), mix / "more" / "d.parquet")
    (mix / "_SUCCESS").write_text("")
    (mix / ".d.parquet.crc").write_text("junk")
    return mix


def test_folder_and_globs_read_every_visible_file_with_distinct_labels(sft_mix):
    folder = read_all(source(sft_mix))
    assert [getattr(i, "prompt", None) for i in folder] == [
        "one", "two", "three", "four", "five, with a comma", None, "seven"]
    assert [i.record for i in folder] == ["a.jsonl:1", "a.jsonl:2", "b.jsonl:1", "c.csv:1", "c.csv:2", "c.csv:3",
                                          "more/d.parquet[0]"]
    assert folder[4].response == "5\nand a second line"  # a quoted CSV value keeps its newline
    assert folder[5].reason == "wrong number of values: 1 for 2 columns"  # rejected, not padded
    assert [i.prompt for i in read_all(source(f"{sft_mix}/*.jsonl"))] == ["one", "two"]
    assert [i.record for i in read_all(source(f"{sft_mix}/**/*.parquet"))] == ["more/d.parquet[0]"]
    relative = read_all(source("sft-mix/*.jsonl*"), root=str(sft_mix.parent))  # relative to `input`
    assert [i.prompt for i in relative] == ["one", "two", "three"]
    with pytest.raises(FileNotFoundError, match="matches no file"):
        file_units(source(f"{sft_mix}/*.txt"), "")
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        file_units(source(sft_mix / "missing.jsonl"), "")


def test_a_folder_with_an_unknown_extension_asks_for_a_format(sft_mix):
    (sft_mix / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="notes.txt: cannot tell the format from the extension; set format: "):
        file_units(source(sft_mix), "")  # when planning, before anything is read
    (sft_mix / "notes.txt").unlink()


def test_uris_resolved_by_pyarrow_and_by_fsspec(sft_mix):
    assert [i.prompt for i in read_all(source(f"file://{sft_mix}/a.jsonl"))] == ["one", "two"]
    # local:// is not a pyarrow scheme: it goes through fsspec, like hf:// or az:// would.
    assert [i.prompt for i in read_all(source(f"local://{sft_mix}/*.jsonl"))] == ["one", "two"]
    with pytest.raises(ValueError, match="no filesystem for this URI scheme"):
        file_units(source("nosuchscheme://x/y.jsonl"), "")


def test_saved_hf_datasets_folders(tmp_path):
    datasets = pytest.importorskip("datasets")  # a dev dependency: the real writer of the format
    rows = [{"q": "one", "a": "1"}, {"q": "two", "a": None}]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "single"))
    single = read_all(source(tmp_path / "single"))
    assert [i.record for i in single] == ["data-00000-of-00001.arrow[0]", "data-00000-of-00001.arrow[1]"]
    got = normalize_source("hf", single, None, 0)
    assert [r["prompt"] for r in got.rows] == ["one"] and got.errors[0]["reason"] == "missing field 'a' (null)"

    splits = datasets.DatasetDict(train=datasets.Dataset.from_list(rows[:1]),
                                  test=datasets.Dataset.from_list([{"q": "three", "a": "3"}]))
    splits.save_to_disk(str(tmp_path / "dict"))
    both = read_all(source(tmp_path / "dict"))
    assert [(i.record, i.prompt) for i in both] == [("train/data-00000-of-00001.arrow[0]", "one"),
                                                   ("test/data-00000-of-00001.arrow[0]", "three")]
    assert [i.prompt for i in read_all(source(tmp_path / "dict", split="test"))] == ["three"]
    with pytest.raises(ValueError, match="no split 'validation'"):
        file_units(source(tmp_path / "dict", split="validation"), "")
    with pytest.raises(ValidationError, match="`split` applies to a saved HF datasets folder"):
        source(tmp_path / "dict", split="test", format="jsonl")


def test_openai_messages_every_and_last_turn(tmp_path):
    chats = [
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                      {"role": "assistant", "content": "Hello!"},
                      {"role": "user", "content": [{"type": "text", "text": "Capital of France?"}]},
                      {"role": "assistant", "content": "Paris."}], "lang": "English"},
        {"messages": [{"role": "user", "content": "Draw a cat"},
                      {"role": "assistant", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
        {"messages": [{"role": "user", "content": "Weather?"}, {"role": "assistant", "content": None,
                                                                "tool_calls": [{"id": "1"}]}]},
        {"messages": [{"role": "user", "content": "only a question"}]},
        {"messages": "not a list"},
        {"messages": [{"role": "narrator", "content": "x"}]},
    ]
    (tmp_path / "chats.jsonl").write_bytes(jsonl(chats))
    every = read_all(source(tmp_path / "chats.jsonl", shape="messages", turns="every", language_field="lang"))
    rows = [i for i in every if hasattr(i, "prompt")]
    assert [(r.record, r.prompt, r.response) for r in rows] == [
        ("chats.jsonl:1#2", "System: Be brief.\n\nUser: Hi", "Hello!"),
        ("chats.jsonl:1#4", "System: Be brief.\n\nUser: Hi\n\nAssistant: Hello!\n\nUser: Capital of France?", "Paris.")]
    assert rows[1].language == "English" and rows[1].metadata == {"turn": 4, "turns": 5}
    reasons = {i.record: i.reason for i in every if not hasattr(i, "prompt")}
    assert reasons == {
        "chats.jsonl:2": "wrong type: messages[1] has a 'image_url' content part; only text parts are read",
        "chats.jsonl:3": "messages[1] holds tool calls; only text turns are read",
        "chats.jsonl:4": "no user turn followed by an assistant turn",
        "chats.jsonl:5": "wrong type: messages is str, expected a list",
        "chats.jsonl:6": "unsupported role 'narrator' in messages[0] (read: user, human, assistant, gpt, model, "
                         "bot, chatgpt, system)",
    }
    last = [i for i in read_all(source(tmp_path / "chats.jsonl", shape="messages")) if hasattr(i, "prompt")]
    assert [r.record for r in last] == ["chats.jsonl:1#4"]
    got = normalize_source("chat", read_all(source(tmp_path / "chats.jsonl", shape="messages")), None, 0)
    assert got.records == 6 == len(got.rows) + len(got.errors)  # every record in exactly one bucket


def test_sharegpt_conversations_and_a_custom_field(tmp_path):
    records = [{"id": "c1", "conversations": [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"},
                                               {"from": "human", "value": "and 3+3?"}, {"from": "gpt", "value": "6"}]},
               {"id": "c2", "conversations": [{"from": "gpt", "value": "Hello, how can I help?"},
                                              {"from": "human", "value": "Say hi"}, {"from": "human", "value": "in French"},
                                              {"from": "gpt", "value": "Salut"}]}]
    (tmp_path / "sg.json").write_text(json.dumps(records))
    items = read_all(source(tmp_path / "sg.json", shape="sharegpt", metadata_fields=["id"]))
    assert [(i.prompt, i.response, i.metadata["id"]) for i in items] == [
        ("User: 2+2?\n\nAssistant: 4\n\nUser: and 3+3?", "6", "c1"),
        # the opening greeting is context; two user turns in a row are one turn
        ("Assistant: Hello, how can I help?\n\nUser: Say hi\n\nin French", "Salut", "c2")]
    (tmp_path / "custom.jsonl").write_bytes(jsonl([{"dialog": [{"role": "user", "content": "a"},
                                                                {"role": "assistant", "content": "b"}]}]))
    assert [(i.prompt, i.response) for i in read_all(source(tmp_path / "custom.jsonl", shape="messages",
                                                              conversation="dialog"))] == [("a", "b")]


def test_shape_config_errors():
    with pytest.raises(ValidationError, match="shape: fields needs `prompt`"):
        FileSource.model_validate({"type": "file", "path": "x.jsonl", "response": "a"})
    with pytest.raises(ValidationError, match="reads prompt and response from the turns"):
        FileSource.model_validate({"type": "file", "path": "x.jsonl", "shape": "messages", "prompt": ["q"]})
    with pytest.raises(ValidationError, match="`conversation` applies to shape messages or sharegpt"):
        FileSource.model_validate({"type": "file", "path": "x", "prompt": ["q"], "response": "a", "conversation": "m"})


def test_stage_reads_a_glob_on_ray_data_like_the_in_memory_normalizer(tmp_path, mlflow_store, ray_local):
    """Eight files read by parallel Ray Data tasks: the published rows, their order, the error rows and
    the counts equal one in-memory pass over the same items (dedup across files keeps the first)."""
    from treasure.corpus.stage import run

    folder = tmp_path / "in" / "parts"
    folder.mkdir(parents=True)
    for f in range(8):
        rows = [{"q": f"question {(f * 40 + k) % 250}", "a": f"answer {(f * 40 + k) % 250}"} for k in range(40)]
        rows[3] = {"q": "", "a": "empty prompt"}
        (folder / f"part-{f}.jsonl").write_bytes(jsonl(rows) + b"\n{broken")
    cfg = {"type": "file", "path": "parts/*.jsonl", "prompt": ["q"], "response": "a", "max_rows": 200}
    config = NormalizeConfig.model_validate({"input": str(tmp_path / "in"), "output": str(tmp_path / "out"),
                                             "experiment": "corpus-tests", "rows_per_file": 100,
                                             "sources": {"mix": cfg}})
    summary = run(config)
    oracle = normalize_source("mix", read_all(FileSource.model_validate(cfg), str(tmp_path / "in")), 200, config.seed)
    published = pq.read_table(storage.join(str(tmp_path / "out"), "data")).to_pylist()
    assert published == oracle.rows and len(published) == 200
    errors = pq.read_table(storage.join(str(tmp_path / "out"), "errors")).to_pylist()
    assert errors == oracle.errors and len(errors) == 16
    manifest = storage.read_manifest(str(tmp_path / "out"))
    counts = manifest["source_stats"]["mix"]
    assert (counts["records"], counts["rows"], counts["errors"], counts["duplicates"], counts["capped"]) == (
        oracle.records, 200, 16, oracle.duplicates, oracle.capped) == (328, 200, 16, 67, 45)
    assert len(manifest["lineage"]["sources"]["mix"]["files"]) == 8 and summary["metrics"]["rows"] == 200
    assert [f["path"] for f in manifest["files"]] == ["data/part-00000.parquet", "data/part-00001.parquet",
                                                      "errors/part-00000.parquet"]


def test_stage_reads_messages_shards_and_a_parquet_folder(tmp_path, mlflow_store, ray_local):
    """Issue 15's case: a glob of three JSONL shards of OpenAI chats and a folder of Parquet parts."""
    from treasure.corpus.stage import run

    shards = tmp_path / "in" / "chats"
    shards.mkdir(parents=True)
    for s in range(3):
        chats = [{"messages": [{"role": "user", "content": f"Shard {s} question {k}?"},
                               {"role": "assistant", "content": f"Shard {s} answer {k}."},
                               {"role": "user", "content": "And why?"}, {"role": "assistant", "content": f"Because {s}{k}."}]}
                 for k in range(4)]
        chats.append({"messages": [{"role": "user", "content": "unanswered"}]})  # no exchange: an error row
        (shards / f"shard-{s}.jsonl").write_bytes(jsonl(chats))
    folder = tmp_path / "in" / "table"
    folder.mkdir()
    for part in range(2):
        pq.write_table(pa.table({"instruction": [f"Parquet {part}-{k}" for k in range(3)],
                                 "output": [f"Out {part}-{k}" for k in range(3)]}), folder / f"part-{part}.parquet")
    config = NormalizeConfig.model_validate({
        "input": str(tmp_path / "in"), "output": str(tmp_path / "out"), "experiment": "corpus-tests",
        "sources": {"chats": {"type": "file", "path": "chats/shard-*.jsonl", "shape": "messages", "turns": "every"},
                    "table": {"type": "file", "path": "table", "prompt": ["instruction"], "response": "output"}}})
    run(config)
    manifest = storage.read_manifest(str(tmp_path / "out"))
    assert manifest["rows_per_source"] == {"chats": 24, "table": 6} and manifest["errors_per_source"] == {"chats": 3, "table": 0}
    assert manifest["records_per_source"] == {"chats": 27, "table": 6}  # 2 exchanges x 12 chats + 3 bad, 6 rows
    rows = pq.read_table(storage.join(str(tmp_path / "out"), "data")).to_pylist()
    second = next(r for r in rows if r["response"] == "Because 12.")
    assert second["prompt"] == "User: Shard 1 question 2?\n\nAssistant: Shard 1 answer 2.\n\nUser: And why?"
    assert [r["prompt"] for r in rows if r["source"] == "table"] == [f"Parquet {p}-{k}" for p in range(2) for k in range(3)]
    errors = pq.read_table(storage.join(str(tmp_path / "out"), "errors")).to_pylist()
    assert [(e["record"], e["reason"]) for e in errors] == [
        (f"shard-{s}.jsonl:5", "no user turn followed by an assistant turn") for s in range(3)]
