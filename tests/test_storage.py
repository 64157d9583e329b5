"""treasure.storage: atomic local writes, torn commit markers read as "not committed", and globs."""

from __future__ import annotations

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
    from treasure.annotate.shards import read_done, shard_dir

    cfg = AnnotateConfig.model_validate({"input": str(tmp_path / "in"), "output": str(tmp_path / "out")})
    folder = shard_dir(cfg, "part-00000")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "done.json"), "w") as f:
        f.write('{"rows": 12, "fil')
    assert read_done(cfg, "part-00000") is None


def test_globs(tmp_path):
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


def _files(root, contents: dict[str, bytes]) -> list[str]:
    for name, data in contents.items():
        storage.write_bytes(storage.join(root, name), data)
    return [storage.join(root, name) for name in contents]


def test_manifest_round_trip_and_tamper_detection(tmp_path):
    import hashlib

    root = str(tmp_path / "out")
    files = _files(root, {"data/part-00000.parquet": b"first", "data/part-00001.parquet": b"second"})
    manifest = storage.commit_manifest(root, files, {"rows": 2, "config": {"seed": 7}})
    assert storage.read_manifest(root) == manifest  # what is committed is what read_manifest returns
    assert manifest["files"] == [{"path": "data/part-00000.parquet", "sha256": hashlib.sha256(b"first").hexdigest()},
                                 {"path": "data/part-00001.parquet", "sha256": hashlib.sha256(b"second").hexdigest()}]
    assert manifest["rows"] == 2 and manifest["config"] == {"seed": 7} and len(manifest["manifest_id"]) == 16
    assert storage.commit_manifest(root, files, {"rows": 3})["manifest_id"] != manifest["manifest_id"]
    storage.verify_manifest(root, manifest)

    storage.write_bytes(files[1], b"secund")  # same size, other bytes
    with pytest.raises(ValueError, match="checksum mismatch: .*part-00001.parquet"):
        storage.verify_manifest(root, manifest)
    storage.delete(files[1])
    with pytest.raises(ValueError, match="committed file missing: .*part-00001.parquet"):
        storage.verify_manifest(root, manifest)
    # Without checksums only presence is checked.
    unverified = storage.commit_manifest(root, files[:1], {"rows": 1}, verify=False)
    assert unverified["files"] == [{"path": "data/part-00000.parquet", "sha256": None}]
    storage.write_bytes(files[0], b"changed")
    storage.verify_manifest(root, unverified)


@pytest.mark.parametrize("outside", ["{tmp}/elsewhere/x.parquet", "{tmp}/out-sibling/x.parquet", "{tmp}/out"])
def test_commit_refuses_files_outside_the_folder(tmp_path, outside):
    root = str(tmp_path / "out")
    path = outside.format(tmp=tmp_path)
    if path != root:
        storage.write_bytes(path, b"x")
    with pytest.raises(ValueError, match="is not under"):
        storage.commit_manifest(root, [path], {})
    assert storage.read_manifest(root) is None  # nothing committed


def test_a_missing_manifest_is_none(tmp_path):
    assert storage.read_manifest(str(tmp_path / "never-written")) is None


def test_delete_files_and_folders_and_nothing(tmp_path):
    root = str(tmp_path / "d")
    files = _files(root, {"a.txt": b"a", "sub/b.txt": b"b", "sub/deeper/c.txt": b"c"})
    storage.delete(files[0])
    assert not storage.exists(files[0]) and storage.list_files(root) == files[1:]
    storage.delete(storage.join(root, "sub"))  # a folder goes with everything under it
    assert not storage.exists(storage.join(root, "sub")) and storage.list_files(root) == []
    storage.delete(storage.join(root, "never-there"))  # nothing to delete is not an error


def test_join_and_uri_kinds():
    assert storage.join("s3://bucket/runs/", "/data/", "part-0.parquet") == "s3://bucket/runs/data/part-0.parquet"
    assert storage.join("/tmp/out", "manifest.json") == "/tmp/out/manifest.json"
    assert storage.join("runs/x") == "runs/x"
    assert storage.is_s3("s3://b/k") and not storage.is_s3("/s3://b") and not storage.is_s3("runs/s3")
    assert (storage.scheme_prefix("s3://b/k"), storage.scheme_prefix("hf://datasets/x"), storage.scheme_prefix("/tmp/x")) == (
        "s3://", "hf://", "")


def test_listing_sizes_and_raw_bytes(tmp_path):
    import gzip
    import hashlib

    root = str(tmp_path / "l")
    packed = gzip.compress(b'{"a": 1}\n')
    files = _files(root, {"b/x.jsonl.gz": packed, "a.txt": b"hello"})
    assert storage.list_files(root) == sorted(files) and storage.list_files(str(tmp_path / "none")) == []
    assert [(f, size) for f, size, _ in storage.list_file_infos(root)] == [(files[1], 5), (files[0], len(packed))]
    assert storage.read_bytes(files[0]) == packed  # as stored: never gunzipped on the way
    assert storage.sha256(files[0]) == hashlib.sha256(packed).hexdigest()
    assert storage.exists(root) and storage.exists(files[1]) and not storage.exists(storage.join(root, "c"))


def test_expand_names_what_it_cannot_find(tmp_path):
    _files(str(tmp_path), {"x/a.jsonl": b"{}", "x/.hidden/b.jsonl": b"{}"})
    assert storage.expand(str(tmp_path / "x")) == [(str(tmp_path / "x" / "a.jsonl"), "a.jsonl")]  # hidden folder left out
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        storage.expand(str(tmp_path / "x" / "missing.jsonl"))
    with pytest.raises(FileNotFoundError, match="matches no file"):
        storage.expand(f"{tmp_path}/x/*.parquet")
    # Hidden means hidden below what is named: a hidden folder named itself is listed.
    assert storage.expand(str(tmp_path / "x" / ".hidden")) == [(str(tmp_path / "x" / ".hidden" / "b.jsonl"), "b.jsonl")]


def test_s3_round_trip(s3_bucket):
    """The same calls on an S3 endpoint (moto): keys keep their s3:// URIs through listing and globs."""
    root = f"{s3_bucket}/out"
    files = _files(root, {"data/part-0.jsonl": b"{}\n", "data/part-1.jsonl": b"{}\n{}\n"})
    manifest = storage.commit_manifest(root, files, {"rows": 3})
    assert storage.read_manifest(root) == manifest and storage.read_bytes(files[1]) == b"{}\n{}\n"
    storage.verify_manifest(root, manifest)
    assert storage.list_files(root) == [*files, storage.join(root, storage.MANIFEST)]
    assert storage.expand(f"{root}/data/*.jsonl") == [(files[0], "part-0.jsonl"), (files[1], "part-1.jsonl")]
    storage.write_bytes(files[0], b"[]\n")
    with pytest.raises(ValueError, match="checksum mismatch"):
        storage.verify_manifest(root, manifest)
    storage.delete(storage.join(root, "data"))
    assert storage.list_files(root) == [storage.join(root, storage.MANIFEST)]
