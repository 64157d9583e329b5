"""The real trial end to end at toy size: each round trains (treasure.train.stage) and the last round
evaluates (treasure.evaluate.stage) a tiny marked model; two trials, two rounds each, on real Ray
and MLflow. Slow (several stage runs with their Ray Train / Ray Data start-ups): `make test-slow`.
"""

import math

import pytest
import yaml

import tune_real_data
from treasure.config import load_config
from treasure.tune import search
from treasure.tune.config import TuneConfig


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_real_search_trains_evaluates_and_registers(repo, tmp_path, taxonomy, ray_local, tune_mlflow, monkeypatch):
    import mlflow

    from treasure.train import stage as train_stage
    from treasure.train.config import TrainConfig

    data = tmp_path / "annotated"
    tune_real_data.write_annotated(str(data), tune_real_data.make_rows(240), taxonomy.version)
    train = {"input": str(data), "output": str(tmp_path / "marked"), "experiment": "tune-real", "max_length": 64,
             "batch_size": 8, "max_steps": 4, "warmup_steps": 2, "checkpoint_every": 100, "learning_rate": 3e-3,
             "pool": {"count": 1, "num_cpus": 1}, "log_every": 1,
             "model": {"kind": "tiny", "vocab_size": 400, "hidden_size": 32, "num_layers": 1, "num_heads": 2,
                       "intermediate_size": 64, "tokenizer_cache": str(tmp_path / "tok")}}
    baseline = train_stage.run(TrainConfig.model_validate({**train, "markers": False, "output": str(tmp_path / "baseline")}))
    evaluate = {"input": str(data), "baseline": baseline["output"], "marked": str(tmp_path / "marked"),
                "output": str(tmp_path / "eval"), "experiment": "tune-real", "heldout_fraction": 0.1,
                "tail_fraction": 0.2, "generation": {"batch_size": 16, "sampling": {"max_tokens": 24}},
                "length_control": {"prompts": 0}, "win_rate": {"prompts": 0},
                "categories": {"inference_prompts": 8, "adherence_prompts_per_value": 0}}
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(yaml.safe_dump({"train": train, "evaluate": evaluate}))
    config = load_config(TuneConfig, repo / "tuning" / "configs" / "demo.yaml", [
        f"pipeline_config={pipeline}", f"storage_path={tmp_path / 'tune'}", "name=real", "train_overrides=[]",
        "evaluate_overrides=[]", "heldout_rows=16", "num_samples=1", "scheduler.type=fifo",
        "space={dropout.dataset_rate: {type: grid, values: [0.0, 0.7]}, dropout.sample_rate: {type: choice, values: [0.5]}}",
    ], section="tune")
    out = search.run(config)

    assert out["metrics"]["trials_finished"] == 2
    for row in out["trials"]:
        assert row["round"] == 2 and math.isfinite(row["objective"]) and math.isfinite(row["heldout.tail.loss"])
        assert 0.0 <= row["longtail.inference.accuracy"] <= 1.0
        # objective = tail accuracy - 0.1 * tail held-out loss (tuning/configs/demo.yaml)
        assert row["objective"] == pytest.approx(row["longtail.inference.accuracy"] - 0.1 * row["heldout.tail.loss"])
    client = mlflow.MlflowClient()
    trials = mlflow.search_runs(experiment_names=["treasure-tune"], output_format="list",
                                filter_string=f"tags.`mlflow.parentRunId` = '{out['mlflow_run_id']}'")
    assert len(trials) == 2
    for t in trials:  # each trial run holds its stage runs: train per round, evaluate at the end
        stages = mlflow.search_runs(experiment_names=["tune-real"], output_format="list",
                                    filter_string=f"tags.`mlflow.parentRunId` = '{t.info.run_id}'")
        assert sorted(s.info.run_name.split("-")[0] for s in stages) == ["evaluate", "treasure", "treasure"]
    version = client.get_model_version("treasure-tune-best", out["registered"]["model_version"])
    assert version.run_id == out["registered"]["trial_run_id"]
    assert out["plot"] and out["best"]["dropout.dataset_rate"] in (0.0, 0.7)
