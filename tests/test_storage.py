"""treasure.storage: atomic local writes, torn commit markers read as "not committed", and globs."""

from __future__ import annotations

import doctest
import json
import os

import pytest

from treasure import storage


def test_local_write_is_atomic_and_leaves_no_temp_files(tmp_path, monkeypatch):
    target = tmp_path / "sub" / "manifest.json"
    storage.write_bytes(str(target), b'{"v": 1}')
    assert target.read_bytes() == b'{"v": 1}'

    def crash(src, dst):  # the process dies between writing the temporary file and renaming it
        raise OSError("killed")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="killed"):
        storage.write_bytes(str(target), b'{"v": 2, "padding": "' + b"x" * 100_000 + b'"}')
    assert target.read_bytes() == b'{"v": 1}'  # the old file, whole
    assert sorted(p.name for p in target.parent.iterdir()) == ["manifest.json"]


def test_a_torn_manifest_is_not_committed_and_not_a_crash(tmp_path):
    full = json.dumps({"files": [], "rows": 3, "config": {"a": 1}}).encode()
    (tmp_path / storage.MANIFEST).write_bytes(full[: len(full) // 2])  # what an old non-atomic writer left
    assert storage.read_manifest(str(tmp_path)) is None
    storage.commit_manifest(str(tmp_path), [], {"rows": 3})
    assert storage.read_manifest(str(tmp_path))["rows"] == 3


def test_a_torn_shard_marker_means_the_shard_is_redone(tmp_path):
    from treasure.annotate.config import AnnotateConfig
    from treasure.annotate.stage import read_done, shard_dir

    cfg = AnnotateConfig.model_validate({"input": str(tmp_path / "in"), "output": str(tmp_path / "out")})
    folder = shard_dir(cfg, "part-00000")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "done.json"), "w") as f:
        f.write('{"rows": 12, "fil')
    assert read_done(cfg, "part-00000") is None


def test_docstring_examples_and_globs(tmp_path):
    assert doctest.testmod(storage).failed == 0
    for name in ["x/a.jsonl", "x/b.json", "x/y/c.jsonl", "x/y/z/d.jsonl", "x/[e].jsonl", "x/_tmp/f.jsonl"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("{}")

    def rel(pattern):
        return [r for _, r in storage.expand(f"{tmp_path}/{pattern}")]

    assert rel("x/*.jsonl") == ["[e].jsonl", "a.jsonl"]  # `*` stays within a folder; `_tmp` is hidden
    assert rel("x/**/*.jsonl") == ["[e].jsonl", "a.jsonl", "y/c.jsonl", "y/z/d.jsonl"]
    assert rel("x/y/**") == ["c.jsonl", "z/d.jsonl"]
    assert rel("x/?.json") == ["b.json"] and rel("x/[ab].json*") == ["a.jsonl", "b.json"]
    assert storage.expand(str(tmp_path / "x" / "a.jsonl")) == [(str(tmp_path / "x" / "a.jsonl"), "a.jsonl")]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        storage.expand(f"{tmp_path}/nope/*.jsonl")
