"""End to end on real local Ray: train the tiny model (marked and baseline), load it with plain transformers."""

from __future__ import annotations

import json

from transformers import AutoModelForCausalLM, AutoTokenizer


def test_marked_and_baseline_train_and_generate(ray_local, tiny_train_config, mlflow_env, tmp_path):
    import mlflow

    from treasure.train.stage import run

    summaries = {}
    for markers in (True, False):
        cfg = tiny_train_config(markers=markers, output=str(tmp_path / f"ckpt-{markers}"))
        summaries[markers] = s = run(cfg)
        assert s["metrics"]["steps"] == cfg.max_steps
        tok = AutoTokenizer.from_pretrained(s["output"])
        lm = AutoModelForCausalLM.from_pretrained(s["output"])
        prompt = tok.apply_chat_template([{"role": "user", "content": "Write about the river."}], tokenize=False,
                                         add_generation_prompt=True)
        ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
        out = lm.generate(**ids, max_new_tokens=8, do_sample=False)
        assert out.shape[1] > ids["input_ids"].shape[1]
        meta = json.loads((tmp_path / f"ckpt-{markers}" / "treasure.json").read_text())
        assert meta["markers"] is markers and meta["step"] == cfg.max_steps
        assert meta["quality_reference"]["English"] > 0.5
        assert (tmp_path / f"ckpt-{markers}" / "taxonomy.yaml").exists()
        client = mlflow.MlflowClient()
        assert len(client.get_metric_history(s["mlflow_run_id"], "loss")) == cfg.max_steps
        version = client.get_model_version(cfg.model_name, s["model_version"])
        assert version.tags["taxonomy_version"] == meta["taxonomy_version"]
    # same tokenizer for both (trained once per data manifest)
    a = json.loads((tmp_path / "ckpt-True" / "tokenizer.json").read_text())
    b = json.loads((tmp_path / "ckpt-False" / "tokenizer.json").read_text())
    assert a["model"]["vocab"] == b["model"]["vocab"]
    # idempotent: same config returns the committed summary without training
    again = run(tiny_train_config(markers=True, output=str(tmp_path / "ckpt-True")))
    assert again["mlflow_run_id"] == summaries[True]["mlflow_run_id"]
