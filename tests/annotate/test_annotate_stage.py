"""The annotate stage on a real local Ray: invariant, errors table, manifest, resume, S3, idempotence."""

from __future__ import annotations

import io
import json

import pandas as pd
import pyarrow.parquet as pq
import pytest

from annotate_corpus import base_config, make_rows, write_normalized
from treasure import storage
from treasure.annotate.config import AnnotateConfig
from treasure.annotate.stage import run


def read_parts(uri: str, folder: str) -> pd.DataFrame:
    manifest = storage.read_manifest(uri)
    parts = [e["path"] for e in manifest["files"] if e["path"].startswith(folder + "/")]
    return pd.concat([pq.read_table(io.BytesIO(storage.read_bytes(storage.join(uri, p)))).to_pandas() for p in parts], ignore_index=True)


def test_annotate_stage_publishes_markers_errors_and_report(tmp_path, ray_local, annotate_mlflow, taxonomy):
    rows = make_rows(20)
    src = write_normalized(str(tmp_path / "normalized"), rows)
    cfg = AnnotateConfig.model_validate(base_config(src, str(tmp_path / "annotated")))
    summary = run(cfg)
    m = summary["metrics"]
    assert (m["input_rows"], m["rows"], m["error_rows"]) == (23, 20, 3)
    manifest = storage.read_manifest(cfg.output)
    assert manifest["manifest_id"] == summary["manifest_id"] and manifest["taxonomy_version"] == taxonomy.version
    storage.verify_manifest(cfg.output, manifest)

    data, errors = read_parts(cfg.output, "data"), read_parts(cfg.output, "errors")
    assert sorted(data["id"]) == sorted(r["id"] for r in rows[:20])
    reasons = dict(zip(errors["id"], errors["reason"]))
    assert reasons["bad:empty"].startswith("bad text: response is empty")
    assert reasons["bad:meta"].startswith("bad metadata")
    assert reasons["bad:null"].startswith("bad text: prompt")

    by_id = {r["id"]: (json.loads(r["markers"]), json.loads(r["provenance"])) for r in data.to_dict("records")}
    markers, prov = by_id["mathematics:0000000000000001"]
    assert markers["domain"] == "Math" and markers["task"] == "Reasoning" and markers["source"] == "Synthetic"
    assert prov["domain"]["by"] == "metadata" and prov["length_tokens"]["by"] == "rule"
    markers, prov = by_id["arena-hard:0000000000000002"]
    assert markers["code_type"] == "python" and markers["format"] == "Markdown" and markers["language"] == "English"
    assert prov["language"]["by"] == "rule" and prov["language"]["model"].startswith("py3langid")
    markers, _ = by_id["alpaca-zh:0000000000000003"]
    assert markers["language"] == "Chinese" and int(markers["length_tokens"]) > 10  # spaCy's Chinese segmenter
    assert all(json.loads(m)["quality_bucket"] in {"1", "2", "3", "4"} for m in data["markers"])
    assert all(taxonomy.validate_markers(json.loads(m)) == json.loads(m) for m in data["markers"])

    report = json.loads(storage.read_bytes(storage.join(cfg.output, "report/marker_report.json")))
    assert report["rows"] == 20 and report["categories"]["domain"]["values"]
    assert storage.read_bytes(storage.join(cfg.output, "report/marker_report.png"))[:4] == b"\x89PNG"
    # Idempotent: the same config returns the committed summary without recomputing.
    assert run(cfg)["manifest_id"] == summary["manifest_id"]


@pytest.mark.slow  # ~1-3 min on 2 busy cores: two Ray Data runs
def test_annotate_resume_after_crash_is_exactly_once(tmp_path, ray_local, annotate_mlflow):
    rows = make_rows(30)  # 33 rows, 8 per shard → 5 shards
    src = write_normalized(str(tmp_path / "normalized"), rows, rows_per_file=20)
    cfg = AnnotateConfig.model_validate(base_config(src, str(tmp_path / "annotated")))
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(cfg, crash_after_shards=2)
    assert storage.read_manifest(cfg.output) is None  # nothing published by the crashed run
    summary = run(cfg)
    m = summary["metrics"]
    assert m["shards_skipped"] == 2 and m["shards_run"] == m["shards"] - 2
    data, errors = read_parts(cfg.output, "data"), read_parts(cfg.output, "errors")
    ids = list(data["id"]) + list(errors["id"].dropna())
    assert len(ids) == len(set(ids)) and len(data) + len(errors) == len(rows) == m["input_rows"]


def test_annotate_s3_round_trip(tmp_path, ray_local, annotate_mlflow, s3_bucket):
    rows = make_rows(10, bad=False)
    src = write_normalized(f"{s3_bucket}/normalized", rows)
    cfg = AnnotateConfig.model_validate(base_config(src, f"{s3_bucket}/annotated", quality={"enabled": False}))
    summary = run(cfg)
    manifest = storage.read_manifest(cfg.output)
    assert manifest["manifest_id"] == summary["manifest_id"] and manifest["rows"] == 10
    storage.verify_manifest(cfg.output, manifest)
    assert sorted(read_parts(cfg.output, "data")["id"]) == sorted(r["id"] for r in rows)


def test_annotate_s3_credentials_stay_in_the_workers_environment(tmp_path, ray_local, annotate_mlflow, s3_bucket):
    """Temporary credentials (secret key + session token) reach the read tasks through the workers' own
    environment: not in the Data plan's task arguments, the dashboard, Ray's logs or MLflow."""
    from ray import cloudpickle
    from secret_places import AWS_SECRET_CANARY, AWS_SESSION_CANARY, dashboard_views, leaks, mlflow_run_texts, ray_logs

    from treasure.annotate.shards import plan_shards
    from treasure.annotate.stage import build_dataset

    rows = make_rows(6, bad=False)
    src = write_normalized(f"{s3_bucket}/normalized", rows)
    cfg = AnnotateConfig.model_validate(base_config(src, f"{s3_bucket}/annotated", quality={"enabled": False}))
    summary = run(cfg)
    assert storage.read_manifest(cfg.output)["rows"] == 6
    # The plan's functions with their arguments and constructor arguments: what Ray ships with each task.
    plan = cloudpickle.dumps(build_dataset(cfg, plan_shards(src, storage.read_manifest(src), cfg.shard_rows, 0)))
    places = [{"annotate plan (task arguments)": plan.decode("latin-1")}, dashboard_views(ray_local),
              ray_logs(ray_local), mlflow_run_texts([summary["mlflow_run_id"]])]
    for secret in (AWS_SECRET_CANARY, AWS_SESSION_CANARY):
        assert leaks(secret, *places) == []


@pytest.mark.slow  # a Ray Data run with a tagger actor (model load)
def test_annotate_off_list_tagger_answers_become_unspecified(tmp_path, ray_local, annotate_mlflow, tiny_checkpoint):
    """A random-weight tiny Llama answers gibberish: it must end as 'no task marker' with the raw answer kept."""
    rows = make_rows(10, bad=False)
    src = write_normalized(str(tmp_path / "normalized"), rows)
    cfg = AnnotateConfig.model_validate(base_config(
        src, str(tmp_path / "annotated"), quality={"enabled": False},
        tagger={"enabled": True, "model": str(tiny_checkpoint), "mode": "generate", "categories": ["task", "domain"],
                "max_rows": 3, "max_new_tokens": 4, "batch_size": 4, "pool": {"count": 1, "num_cpus": 1.0}}))
    summary = run(cfg)
    data = read_parts(cfg.output, "data")
    tagged, capped = 0, 0
    for m_json, p_json in zip(data["markers"], data["provenance"]):
        markers, prov = json.loads(m_json), json.loads(p_json)
        for cat in ("task", "domain"):
            p = prov.get(cat, {})
            if p.get("by") != "llm":
                continue
            note = p.get("note") or ""
            if note.startswith("not tagged"):
                capped += 1
                assert cat not in markers
            elif note.startswith("unspecified: answer not in the class list"):
                tagged += 1
                assert p["raw"] is not None and p["model"] == str(tiny_checkpoint)
                assert markers.get(cat) in (None, "Unspecified") and (cat == "domain") == (cat in markers)
    assert tagged >= 1 and capped >= 1 and summary["metrics"]["tagger_answers"] == tagged
