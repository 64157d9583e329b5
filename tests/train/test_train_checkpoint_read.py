"""treasure.models.checkpoint.read_checkpoint: validation and fallback from a corrupt newest checkpoint."""

from __future__ import annotations

import json
import shutil

import pytest

from treasure import storage
from treasure.models.checkpoint import CheckpointWarning, read_checkpoint, validate


def _publish(src, dst, step):
    shutil.copytree(src, dst)
    meta = json.loads((dst / "treasure.json").read_text())
    (dst / "treasure.json").write_text(json.dumps({**meta, "step": step}))
    storage.commit_manifest(str(dst), [str(p) for p in sorted(dst.iterdir())], {"step": step})


def test_valid_checkpoint_reads(bpe_checkpoint):
    info = read_checkpoint(str(bpe_checkpoint))
    assert info.local_dir == bpe_checkpoint and info.taxonomy.version == info.meta["taxonomy_version"]


def test_corrupt_newest_falls_back_to_previous(bpe_checkpoint, tmp_path):
    out = tmp_path / "out"
    _publish(bpe_checkpoint, out, step=9)
    _publish(bpe_checkpoint, out / "_ray" / "run" / "checkpoint_step_000006", step=6)
    _publish(bpe_checkpoint, out / "_ray" / "run" / "checkpoint_step_000003", step=3)
    weights = out / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a torn upload
    with pytest.warns(CheckpointWarning, match="checksum"):
        info = read_checkpoint(str(out))
    assert info.meta["step"] == 6 and info.source.endswith("checkpoint_step_000006")


def _run_checkpoint(src, dst, step, config, data="data-1"):
    """An intermediate checkpoint as the train loop writes it: treasure.json holds the run's config."""
    shutil.copytree(src, dst)
    meta = json.loads((dst / "treasure.json").read_text())
    (dst / "treasure.json").write_text(json.dumps({**meta, "step": step, "config": config, "data_manifest_id": data}))


def _published_run(src, out, config, data="data-1"):
    shutil.copytree(src, out)
    storage.commit_manifest(str(out), [str(p) for p in sorted(out.iterdir())],
                            {"config": config, "data_manifest_id": data, "step": 9})
    weights = out / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # the published copy is torn


def test_fallback_only_to_the_published_runs_own_checkpoints(bpe_checkpoint, tmp_path):
    out = tmp_path / "out"
    _published_run(bpe_checkpoint, out, {"lr": 1e-4, "model_name": "m"})
    # a newer step of an older run (another config) that left its checkpoints in the same output
    _run_checkpoint(bpe_checkpoint, out / "_ray" / "m-old" / "checkpoint_step_000008", 8, {"lr": 5e-4, "model_name": "m"})
    # the same config but other data is another run too
    _run_checkpoint(bpe_checkpoint, out / "_ray" / "m-data" / "checkpoint_step_000007", 7, {"lr": 1e-4, "model_name": "m"},
                    data="data-2")
    # this run's own checkpoint (the loop records `force` too; it does not change what is trained)
    _run_checkpoint(bpe_checkpoint, out / "_ray" / "m-new" / "checkpoint_step_000004", 4,
                    {"lr": 1e-4, "model_name": "m", "force": True})
    with pytest.warns(CheckpointWarning, match="checksum"):
        info = read_checkpoint(str(out))
    assert info.source.endswith("m-new/checkpoint_step_000004") and info.meta["step"] == 4


def test_no_fallback_to_another_run(bpe_checkpoint, tmp_path):
    out = tmp_path / "out"
    _published_run(bpe_checkpoint, out, {"lr": 1e-4, "model_name": "m"})
    _run_checkpoint(bpe_checkpoint, out / "_ray" / "m-old" / "checkpoint_step_000008", 8, {"lr": 5e-4, "model_name": "m"})
    with pytest.raises(FileNotFoundError, match="no valid checkpoint") as e:
        read_checkpoint(str(out))
    assert "m-old" not in str(e.value)  # never even considered


def test_unpublished_output_with_two_runs_is_ambiguous(bpe_checkpoint, tmp_path):
    out = tmp_path / "out"
    _run_checkpoint(bpe_checkpoint, out / "_ray" / "m-a" / "checkpoint_step_000004", 4, {"lr": 1e-4})
    _run_checkpoint(bpe_checkpoint, out / "_ray" / "m-b" / "checkpoint_step_000006", 6, {"lr": 5e-4})
    with pytest.raises(FileNotFoundError, match="2 training runs"):
        read_checkpoint(str(out))
    info = read_checkpoint(str(out / "_ray" / "m-a"))  # naming one run's folder chooses it
    assert info.meta["step"] == 4 and info.source.endswith("m-a/checkpoint_step_000004")


def test_torn_checkpoint_manifest_is_a_reason_not_a_crash(bpe_checkpoint, tmp_path):
    out = tmp_path / "out"
    _publish(bpe_checkpoint, out, step=9)
    manifest = out / "manifest.json"
    manifest.write_bytes(manifest.read_bytes()[:40])
    with pytest.raises(FileNotFoundError, match="manifest.json is unreadable"):
        read_checkpoint(str(out))


def test_missing_files_and_nothing_valid(tmp_path, bpe_checkpoint):
    bad = tmp_path / "bad"
    shutil.copytree(bpe_checkpoint, bad)
    (bad / "taxonomy.yaml").unlink()
    assert validate(bad) == ["missing taxonomy.yaml"]
    with pytest.raises(FileNotFoundError, match="no valid checkpoint"):
        read_checkpoint(str(bad))


def _upload(s3, bucket_uri, folder, prefix):
    bucket = bucket_uri[len("s3://"):]
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        s3.put_object(Bucket=bucket, Key=f"{prefix}/{f.relative_to(folder).as_posix()}", Body=f.read_bytes())


def test_s3_cache_is_one_immutable_copy_per_version(bpe_checkpoint, s3_bucket, tmp_path, monkeypatch):
    """A second load reuses the cached copy without rewriting a byte (a replica on the same node may
    have it memory-mapped); a republished checkpoint gets a new copy and the old one stays whole."""
    import os

    import boto3

    monkeypatch.setenv("TREASURE_CHECKPOINT_CACHE", str(tmp_path / "cache"))
    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    _upload(s3, s3_bucket, bpe_checkpoint, "ckpt")
    first = read_checkpoint(f"{s3_bucket}/ckpt").local_dir
    weights = first / "model.safetensors"
    before = (weights.stat().st_ino, weights.stat().st_mtime_ns)
    again = read_checkpoint(f"{s3_bucket}/ckpt").local_dir
    assert again == first and (weights.stat().st_ino, weights.stat().st_mtime_ns) == before
    meta = json.loads((bpe_checkpoint / "treasure.json").read_text())
    s3.put_object(Bucket=s3_bucket[5:], Key="ckpt/treasure.json", Body=json.dumps({**meta, "step": 99}).encode())
    newer = read_checkpoint(f"{s3_bucket}/ckpt")
    assert newer.local_dir != first and newer.meta["step"] == 99
    assert json.loads((first / "treasure.json").read_text())["step"] == meta["step"]  # the old copy is untouched
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_s3_key_outside_the_folder_is_refused(bpe_checkpoint, s3_bucket, tmp_path, monkeypatch):
    import os

    import boto3

    monkeypatch.setenv("TREASURE_CHECKPOINT_CACHE", str(tmp_path / "cache" / "inner"))
    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    _upload(s3, s3_bucket, bpe_checkpoint, "ckpt")
    s3.put_object(Bucket=s3_bucket[5:], Key="ckpt/../../../escaped.txt", Body=b"planted")
    with pytest.raises(FileNotFoundError, match="would land outside the checkpoint folder"):
        read_checkpoint(f"{s3_bucket}/ckpt")
    assert not list(tmp_path.rglob("escaped.txt"))


def test_concurrent_loads_of_one_version_share_a_whole_copy(bpe_checkpoint, s3_bucket, tmp_path, monkeypatch):
    import concurrent.futures as cf
    import os

    import boto3

    monkeypatch.setenv("TREASURE_CHECKPOINT_CACHE", str(tmp_path / "cache"))
    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    _upload(s3, s3_bucket, bpe_checkpoint, "ckpt")
    with cf.ThreadPoolExecutor(4) as pool:
        dirs = list(pool.map(lambda _: read_checkpoint(f"{s3_bucket}/ckpt").local_dir, range(4)))
    assert len(set(dirs)) == 1 and validate(dirs[0]) == []
