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


def test_missing_files_and_nothing_valid(tmp_path, bpe_checkpoint):
    bad = tmp_path / "bad"
    shutil.copytree(bpe_checkpoint, bad)
    (bad / "taxonomy.yaml").unlink()
    assert validate(bad) == ["missing taxonomy.yaml"]
    with pytest.raises(FileNotFoundError, match="no valid checkpoint"):
        read_checkpoint(str(bad))
