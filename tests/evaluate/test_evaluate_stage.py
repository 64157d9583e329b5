"""The evaluate stage end to end on local Ray: tiny checkpoint, committed data, HTTP judge, MLflow."""

from __future__ import annotations

import json

import pytest

from treasure import storage
from treasure.models.engine import EngineConfig, SamplingParams
from treasure.evaluate.config import EvaluateConfig
from treasure.evaluate.generation import generate_local, generate_rows


def test_generate_rows_rejects_bad_requests(tiny_checkpoint, taxonomy):
    cfg = EngineConfig(model=str(tiny_checkpoint))
    rows = [{"request_id": "r", "model": "m", "user_turn": "Hi"}]
    with pytest.raises(ValueError, match="unique"):
        generate_rows(rows + rows, {"m": cfg}, {"m": True}, SamplingParams(), taxonomy)
    with pytest.raises(ValueError, match="without an engine"):
        generate_rows(rows, {"other": cfg}, {"other": True}, SamplingParams(), taxonomy)


def test_generation_parses_the_block_a_marked_model_writes(lessons_checkpoint, taxonomy):
    """Evaluation's generation (in-process here; the stage's Ray Data actors run the same
    `run_requests`) on a model that does write a block (tests/marker_lessons.py; the tiny random
    model of the stage test never does): the answer comes without the block, the block's markers
    come back as `inferred`."""
    from marker_lessons import LESSONS, PROMPT

    from treasure.template import render_request

    _, task, domain, concise, _ = LESSONS[0]
    requests = []
    for request_id, requested in (("prefilled", {"length_bucket": "concise"}), ("whole-block", {})):
        turn, prefix = render_request(PROMPT, requested, taxonomy)
        requests.append({"request_id": request_id, "user_turn": turn, "prefix": prefix})
    assert requests[0]["prefix"] and not requests[1]["prefix"]
    rows = generate_local(requests, EngineConfig(model=str(lessons_checkpoint)), SamplingParams(max_tokens=80), taxonomy,
                          marked=True)
    assert [r["request_id"] for r in rows] == ["prefilled", "whole-block"]
    for row in rows:
        assert row["raw"].startswith(row["prefix"] or "<TEMPLATE>") and "</TEMPLATE>" in row["raw"], row
        assert row["answer"] == concise and row["block_ok"] and row["finish_reason"] == "stop", row
        assert json.loads(row["inferred"]) == {"length_bucket": "concise", "task": task, "domain": domain,
                                               "language": "English"}, row
        assert json.loads(row["problems"]) == []


def test_stage_end_to_end(ray_local, tiny_checkpoint, taxonomy, annotated_uri, judge_server, tmp_path, monkeypatch):
    import mlflow

    from treasure.evaluate.stage import run

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("MLFLOW_ARTIFACT_ROOT", (tmp_path / "artifacts").as_uri())
    out = str(tmp_path / "eval")
    cfg = EvaluateConfig(
        input=annotated_uri, baseline=str(tiny_checkpoint), marked=str(tiny_checkpoint), output=out, heldout_fraction=0.2,
        experiment="test-evaluate", generation={"batch_size": 8, "sampling": {"max_tokens": 6}}, length_control={"prompts": 4},
        categories={"inference_prompts": 4, "adherence_prompts_per_value": 1, "adherence_max_values": 2},
        win_rate={"prompts": 3, "bootstrap_resamples": 200, "judge": {"type": "http", "model": "stub", "base_url": judge_server.url}},
    )
    summary = run(cfg)
    assert storage.read_manifest(out)["manifest_id"] == summary["manifest_id"]
    m = json.loads(storage.read_bytes(storage.join(out, "metrics.json")))
    assert set(m["length_control"]["conditions"]) == {"baseline_instruction", "marked_instruction", "marked_marker", "marked_marker_copy"}
    assert m["length_control"]["conditions"]["marked_marker"]["n"] == 4
    assert m["length_control"]["conditions"]["marked_marker"]["prefilled"] == 4 and m["length_control"]["conditions"]["marked_marker_copy"]["prefilled"] == 0
    assert set(m["inference"]["categories"]) >= {"domain", "task", "language"}
    assert set(m["adherence"]["categories"]) == {"length_bucket", "language", "format", "code_type"}
    assert set(m["adherence"]["values"]["length_bucket"]) == {"concise", "medium", "long"}
    assert all("mean_words" in r for r in m["adherence"]["values"]["length_bucket"].values())
    assert set(m["adherence"]["length_separation"]["length_bucket"]) >= {"monotonic", "long_over_concise", "passed"}
    assert m["win_rates"]["marked_inferred"]["overall"]["n"] + m["win_rates"]["marked_inferred"]["overall"]["failed"] == 3
    assert m["win_rates"]["quality_steered"]["overall"]["n"] == 3
    for name in ("report.md", "violation_by_condition.png", "accuracy_by_category.png", "head_vs_tail.png", "data/generations.parquet"):
        assert storage.exists(storage.join(out, name)), name
    # MLflow holds the run with the headline metrics and the report.
    run_data = mlflow.get_run(summary["mlflow_run_id"])
    assert {"length_control.marked_marker.violation_rate", "length_control.marked_marker_copy.violation_rate",
            "adherence.length_bucket.concise.mean_words"} <= set(run_data.data.metrics)
    assert run_data.data.tags["stage"] == "evaluate"
    arts = {a.path for a in mlflow.MlflowClient().list_artifacts(summary["mlflow_run_id"], "evaluation")}
    assert "evaluation/report.md" in arts
    # Generation went through Ray Data; in-process generation gives the same text for the same requests.
    import pyarrow.parquet as pq

    gens = pq.read_table(storage.join(out, "data/generations.parquet")).to_pylist()
    assert len(gens) == m["generations"]
    # Prefilled requests come back with text that starts with their prefix (the block still parses).
    prefilled = [g for g in gens if g["prefix"]]
    assert prefilled and all(g["raw"].startswith(g["prefix"]) for g in prefilled)
    sample = [g for g in gens if g["model"] == "marked" and g["prefix"]][:2] + [g for g in gens if g["model"] == "marked" and not g["prefix"]][:2]
    local = generate_local([{"request_id": g["request_id"], "user_turn": g["user_turn"], "prefix": g["prefix"]} for g in sample],
                           EngineConfig(model=str(tiny_checkpoint), batch_size=8), SamplingParams(max_tokens=6), taxonomy, marked=True)
    assert [g["raw"] for g in sample] == [r["raw"] for r in local]
    # Idempotent: same config → the committed summary, no new MLflow run.
    again = run(cfg)
    assert again["manifest_id"] == summary["manifest_id"] and again["mlflow_run_id"] == summary["mlflow_run_id"]
