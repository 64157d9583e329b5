"""End to end on real local Ray: marked model to s3:// (moto), baseline on 2 workers; both load and generate."""

from __future__ import annotations

import json
import math

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer


def _generates(folder) -> str:
    """What the checkpoint answers with plain transformers (greedy); fails when the checkpoint is broken.

    Loading alone proves little: a weights file that lacks tensors still loads (transformers fills
    them in at random and only logs it), and NaN weights still emit tokens (the argmax of NaN
    logits). So every weight must come from the file, the logits must be finite, and the new tokens
    must decode to text.
    """
    import torch

    tok = AutoTokenizer.from_pretrained(folder)
    lm, loading = AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True)
    assert not any(loading.values()), f"{folder}: weights not as saved: {loading}"
    prompt = tok.apply_chat_template([{"role": "user", "content": "Write about the river."}], tokenize=False,
                                     add_generation_prompt=True)
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        logits = lm(**ids).logits
    assert torch.isfinite(logits).all(), f"{folder}: non-finite logits"
    out = lm.generate(**ids, max_new_tokens=8, do_sample=False)
    new = out[0, ids["input_ids"].shape[1]:]
    text = tok.decode(new, skip_special_tokens=True)
    assert len(new) > 0 and text, f"{folder}: generated {new.tolist()}, decoded {text!r}"
    return text


@pytest.mark.parametrize("broken, why", [
    ("missing", "weights not as saved"),  # a tensor left out of model.safetensors
    ("nan", "non-finite logits"),  # a diverged run's weights
    ("zeros", "decoded ''"),  # all-zero logits: only token 0, a special token, comes out
])
def test_generates_fails_for_a_broken_checkpoint(bpe_checkpoint, tmp_path, broken, why):
    """The check the stage tests rely on passes for a sound checkpoint and fails for broken ones."""
    import shutil

    from safetensors.torch import load_file, save_file

    assert _generates(bpe_checkpoint)
    folder = tmp_path / broken
    shutil.copytree(bpe_checkpoint, folder)
    weights = load_file(folder / "model.safetensors")
    if broken == "missing":
        weights.pop("model.layers.0.mlp.down_proj.weight")
    else:
        weights["model.norm.weight"] = weights["model.norm.weight"] * (float("nan") if broken == "nan" else 0.0)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(AssertionError, match=why):
        _generates(folder)


def test_marked_model_to_s3_loads_with_transformers(ray_local, tiny_train_config, mlflow_env, s3_bucket, tmp_path, monkeypatch):
    """Also: temporary credentials (a session token) reach the workers through their own environment
    only; neither the secret key nor the token is in the pickled trainer, the dashboard, Ray's logs or MLflow."""
    import mlflow
    from ray import cloudpickle
    from secret_places import AWS_SECRET_CANARY, AWS_SESSION_CANARY, dashboard_views, leaks, mlflow_run_texts, ray_logs

    from treasure.models.checkpoint import read_checkpoint
    from treasure.train.stage import run

    monkeypatch.setenv("TREASURE_CHECKPOINT_CACHE", str(tmp_path / "cache"))
    cfg = tiny_train_config(markers=True, output=f"{s3_bucket}/marked")
    summary = run(cfg)
    assert summary["metrics"]["steps"] == cfg.max_steps and math.isfinite(summary["metrics"]["final_loss"])
    info = read_checkpoint(cfg.output)  # downloads from s3 to the local cache, validates
    assert info.source == cfg.output and info.meta["markers"] is True and info.meta["step"] == cfg.max_steps
    assert info.taxonomy.version == info.meta["taxonomy_version"]
    assert info.meta["quality_reference"]["English"] > 0.75  # p95 of bucket-1 (best quartile) scores
    assert _generates(info.local_dir)
    client = mlflow.MlflowClient()
    assert len(client.get_metric_history(summary["mlflow_run_id"], "loss")) == cfg.max_steps
    assert len(client.get_metric_history(summary["mlflow_run_id"], "learning_rate")) == cfg.max_steps
    version = client.get_model_version(cfg.model_name, summary["model_version"])
    assert version.tags["taxonomy_version"] == info.meta["taxonomy_version"]
    artifacts = {a.path for a in client.list_artifacts(summary["mlflow_run_id"], "model/artifacts/checkpoint")}
    assert {f"model/artifacts/checkpoint/{f}" for f in ("model.safetensors", "taxonomy.yaml", "treasure.json")} <= artifacts
    assert "model/MLmodel" in {a.path for a in client.list_artifacts(summary["mlflow_run_id"], "model")}
    card = (info.local_dir / "README.md").read_text()  # the model card, committed with the checkpoint
    assert "library_name: transformers" in card and f"version `{info.taxonomy.version}`" in card
    assert "| length_bucket | concise, medium, long | yes |" in card and "final_loss" in card
    assert version.description == card
    # Idempotent: the same config returns the committed summary without training again; a push target
    # does not change what is trained, so it ships the committed checkpoint.
    again = run(tiny_train_config(markers=True, output=f"{s3_bucket}/marked", push_to_hub=str(tmp_path / "pushed")))
    assert again["mlflow_run_id"] == summary["mlflow_run_id"]
    assert {"model.safetensors", "README.md", "taxonomy.yaml"} <= set(again["pushed"]["files"])
    assert "train_state.pt" not in again["pushed"]["files"] and _generates(tmp_path / "pushed")
    from treasure.train.stage import _trainer

    trainer = _trainer(cfg, None, {}, "probe")  # what Ray pickles to the workers: the run config's filesystem
    blob = cloudpickle.dumps(trainer.run_config.storage_filesystem)
    places = [dashboard_views(ray_local), ray_logs(ray_local), mlflow_run_texts([summary["mlflow_run_id"]]),
              {"pickled trainer filesystem": blob.decode("latin-1")}]
    for secret in (AWS_SECRET_CANARY, AWS_SESSION_CANARY):
        assert leaks(secret, *places) == []


def test_baseline_on_two_workers_reads_two_shards(ray_local, tiny_train_config, mlflow_env, tmp_path, annotated_dir):
    import mlflow

    from treasure.train.stage import run

    cfg = tiny_train_config(markers=False, pool={"count": 2, "num_cpus": 1}, batch_size=4)
    summary = run(cfg)
    tags = mlflow.MlflowClient().get_run(summary["mlflow_run_id"]).data.tags
    shards = [tags["shard.rank0"], tags["shard.rank1"]]  # "rows:fingerprint of ids"
    assert shards[0] != shards[1]
    # Every training row lands on exactly one worker; the held-out split (evaluation's rows) on none.
    import pyarrow.parquet as pq

    from treasure.heldout import is_heldout

    ids = [i for f in sorted((annotated_dir / "data").glob("*.parquet")) for i in pq.read_table(f, columns=["id"])["id"].to_pylist()]
    assert len(ids) == 96
    trainable = [i for i in ids if not is_heldout(i, cfg.heldout_seed, cfg.heldout_fraction)]
    assert 0 < len(trainable) < 96
    assert sum(int(s.split(":")[0]) for s in shards) == len(trainable)
    losses = mlflow.MlflowClient().get_metric_history(summary["mlflow_run_id"], "loss")
    assert len(losses) == cfg.max_steps and all(math.isfinite(m.value) for m in losses)
    meta = json.loads((tmp_path / "ckpt" / "treasure.json").read_text())
    assert meta["markers"] is False
    assert _generates(tmp_path / "ckpt")
