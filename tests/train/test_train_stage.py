"""End to end on real local Ray: marked model to s3:// (moto), baseline on 2 workers; both load and generate."""

from __future__ import annotations

import json
import math
import socket

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer


def _generates(folder) -> bool:
    tok = AutoTokenizer.from_pretrained(folder)
    lm = AutoModelForCausalLM.from_pretrained(folder)
    prompt = tok.apply_chat_template([{"role": "user", "content": "Write about the river."}], tokenize=False,
                                     add_generation_prompt=True)
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
    out = lm.generate(**ids, max_new_tokens=8, do_sample=False)
    return out.shape[1] > ids["input_ids"].shape[1]


@pytest.fixture
def moto_s3(monkeypatch):
    """A real S3-protocol server (moto) on 127.0.0.1 with one bucket."""
    import boto3
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    for k, v in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                 "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="ckpt")
    yield "s3://ckpt"
    server.stop()


def test_marked_model_to_s3_loads_with_transformers(ray_local, tiny_train_config, mlflow_env, moto_s3, tmp_path, monkeypatch):
    import mlflow

    from treasure.models.checkpoint import read_checkpoint
    from treasure.train.stage import run

    monkeypatch.setenv("TREASURE_CHECKPOINT_CACHE", str(tmp_path / "cache"))
    cfg = tiny_train_config(markers=True, output=f"{moto_s3}/marked")
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
    artifacts = {a.path for a in client.list_artifacts(summary["mlflow_run_id"], "checkpoint")}
    assert {"checkpoint/model.safetensors", "checkpoint/taxonomy.yaml", "checkpoint/treasure.json"} <= artifacts
    # Idempotent: the same config returns the committed summary without training again.
    again = run(tiny_train_config(markers=True, output=f"{moto_s3}/marked"))
    assert again["mlflow_run_id"] == summary["mlflow_run_id"]


def test_baseline_on_two_workers_reads_two_shards(ray_local, tiny_train_config, mlflow_env, tmp_path, annotated_dir):
    import mlflow

    from treasure.train.stage import run

    cfg = tiny_train_config(markers=False, num_workers=2, cpus_per_worker=1, batch_size=4)
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
