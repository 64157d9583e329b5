"""The normalize stage end to end: publish + manifest + MLflow, idempotence, and an s3:// round trip."""

from __future__ import annotations

import json
import shutil

import pyarrow.parquet as pq
import pytest

from treasure import storage
from treasure.config import ConfigError, load_config
from treasure.corpus.config import NormalizeConfig
from treasure.corpus.stage import run


def small_config(input_root: str, output: str, **extra) -> NormalizeConfig:
    """Real bundled files (capped), a generated source and a glob naming a user file full of bad rows."""
    return NormalizeConfig.model_validate({
        "input": input_root, "output": output, "seed": 3, "experiment": "corpus-tests", **extra,
        "sources": {
            "arena-hard": {"type": "arena-hard", "max_rows": 40},
            "self-instruct": {"type": "self-instruct"},
            "mathematics": {"type": "mathematics", "count": 12, "modules": ["arithmetic__mul", "numbers__gcd"]},
            "user": {"type": "file", "path": "user/*.jsonl", "prompt": ["q"], "response": "a", "language": "English",
                     "metadata_fields": ["topic"]},
        },
    })


@pytest.fixture
def input_root(tmp_path, repo, bad_rows):
    root = tmp_path / "in"
    shutil.copytree(repo / "data" / "arena-hard-v2.0", root / "arena-hard-v2.0")
    shutil.copytree(repo / "data" / "self-instruct", root / "self-instruct")
    (root / "user").mkdir()
    (root / "user" / "bad.jsonl").write_bytes(bad_rows)
    return root


def read_rows(uri: str) -> list[dict]:
    fs, path = storage.filesystem(storage.join(uri, "data"))
    return pq.read_table(path, filesystem=fs).to_pylist()


def test_local_run_publishes_accounts_and_is_idempotent(input_root, tmp_path, mlflow_store, ray_local):
    import mlflow

    out = str(tmp_path / "normalized")
    config = small_config(str(input_root), out)
    summary = run(config)
    manifest = storage.read_manifest(out)
    storage.verify_manifest(out, manifest)
    assert summary["manifest_id"] == manifest["manifest_id"] and not summary["cached"]
    assert manifest["rows_per_source"] == {"arena-hard": 40, "self-instruct": 252, "mathematics": 12, "user": 2}
    assert manifest["errors_per_source"]["user"] == 7 and manifest["duplicates_per_source"]["user"] == 1
    assert manifest["capped_per_source"]["arena-hard"] == 710
    for source, counts in manifest["source_stats"].items():
        assert counts["records"] == counts["rows"] + counts["errors"] + counts["duplicates"] + counts["capped"], source
    rows = read_rows(out)
    assert len(rows) == manifest["rows"] == 306 and len({r["id"] for r in rows}) == 306
    assert all(r["id"].startswith(r["source"] + ":") for r in rows)
    assert json.loads(next(r for r in rows if r["source"] == "user")["metadata"]) == {"topic": "math"}
    errors = pq.read_table(storage.join(out, "errors")).to_pylist()
    assert {e["record"] for e in errors} == {f"bad.jsonl:{n}" for n in (2, 3, 4, 5, 7, 8, 9)}
    assert manifest["errors_by_reason"]["user"]["wrong type"] == 2
    assert [f["path"] for f in manifest["files"]] == ["data/part-00000.parquet", "errors/part-00000.parquet"]
    assert not storage.exists(storage.join(out, "_staging"))

    run_data = mlflow.get_run(summary["mlflow_run_id"]).data
    assert run_data.metrics["rows"] == 306 and run_data.metrics["user.errors"] == 7
    assert run_data.params["sources.arena-hard.max_rows"] == "40" and run_data.tags["manifest_id"] == manifest["manifest_id"]

    cached = run(config)  # same config: nothing recomputed, same manifest and MLflow run
    assert cached["cached"] and cached["manifest_id"] == summary["manifest_id"]
    assert cached["mlflow_run_id"] == summary["mlflow_run_id"]
    forced = run(config.model_copy(update={"force": True}))
    assert not forced["cached"] and forced["mlflow_run_id"] != summary["mlflow_run_id"]
    assert {r["id"] for r in read_rows(out)} == {r["id"] for r in rows}  # same seed, same rows
    resampled = run(config.model_copy(update={"seed": 4}))
    assert {r["id"] for r in read_rows(out)} != {r["id"] for r in rows} and not resampled["cached"]


def test_s3_round_trip(input_root, s3_bucket, mlflow_store, ray_local):
    for path in sorted(input_root.rglob("*")):
        if path.is_file():
            storage.write_bytes(f"{s3_bucket}/in/{path.relative_to(input_root)}", path.read_bytes())
    out = f"{s3_bucket}/normalized"
    summary = run(small_config(f"{s3_bucket}/in", out))
    manifest = storage.read_manifest(out)
    storage.verify_manifest(out, manifest)
    assert summary["metrics"]["rows"] == manifest["rows"] == 306 and manifest["errors_per_source"]["user"] == 7
    rows = read_rows(out)
    assert len(rows) == 306 and {r["source"] for r in rows} == {"arena-hard", "self-instruct", "mathematics", "user"}
    files = storage.list_files(out)
    assert files == sorted(f"{out}/{p}" for p in ("manifest.json", "data/part-00000.parquet", "errors/part-00000.parquet"))
    assert all(f["uri"].startswith(f"{s3_bucket}/in/") for f in manifest["lineage"]["sources"]["arena-hard"]["files"])


def test_demo_config_section_loads(repo):
    config = load_config(NormalizeConfig, repo / "pipelines/configs/demo.yaml", section="normalize")
    assert set(config.sources) == {"arena-hard", "alpaca-zh", "self-instruct", "chitchat", "mathematics"}
    assert config.output == "runs/demo/normalized"
    tweaked = load_config(NormalizeConfig, repo / "pipelines/configs/demo.yaml",
                          ["sources.chitchat.max_rows=10", "sources.mathematics.enabled=false"], section="normalize")
    assert tweaked.sources["chitchat"].max_rows == 10 and not tweaked.sources["mathematics"].enabled
    with pytest.raises(ConfigError, match="sources.chitchat.chitchat.max_rowz"):
        load_config(NormalizeConfig, repo / "pipelines/configs/demo.yaml", ["sources.chitchat.max_rowz=1"],
                    section="normalize")
    with pytest.raises(ConfigError, match="no source is enabled"):
        load_config(NormalizeConfig, repo / "pipelines/configs/demo.yaml",
                    [f"sources.{s}.enabled=false" for s in config.sources], section="normalize")
