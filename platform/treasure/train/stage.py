"""The train stage: annotated Parquet → Ray Data → TorchTrainer → published HF checkpoint + MLflow model.

``run(config)`` assumes Ray is initialised. It reads the committed annotated dataset with Ray Data
(materialized: a lazy pipeline handed to a TorchTrainer on 2 CPUs can starve its read tasks),
trains the corpus BPE tokenizer once per data manifest (tiny model), runs the worker loop
(treasure.train.loop) with FailureConfig retries, and publishes the last checkpoint at
``output`` (staged files, then ``manifest.json`` last). Ray's own checkpoints stay under
``output/_ray/<run>/checkpoint_step_N`` (treasure.models.checkpoint falls back to them). Idempotent: an
``output`` committed with the same config is returned as is unless ``force``.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from pathlib import Path

from treasure import storage
from treasure.heldout import is_heldout
from treasure.taxonomy import load_taxonomy
from treasure.template import render_completion, render_prompt
from treasure.models.checkpoint import META, MODEL_ARTIFACT, MODEL_CARD, MODEL_PATH, RAY_DIR, TAXONOMY, TRAIN_STATE
from treasure.train.resume import quality_reference
from treasure.train.config import TrainConfig
from treasure.train.tokenizer_bpe import cache_key, cached_bpe, chat_text

COLUMNS = ["id", "prompt", "response", "language", "markers"]


def _config_key(config: TrainConfig) -> dict:
    """The config as recorded for idempotency (`force` and where a copy is pushed do not change what is trained)."""
    return config.model_dump(mode="json", exclude={"force", "push_to_hub", "push_adapter_only"})


def _read_dataset(config: TrainConfig, taxonomy):
    """(materialized Ray Dataset, input manifest) after checking the dataset's taxonomy."""
    import ray

    manifest = storage.read_manifest(config.input)
    if manifest is None:
        raise FileNotFoundError(f"{config.input} has no committed manifest.json; run the annotate stage first")
    if manifest.get("taxonomy_version") not in (None, taxonomy.version):
        raise ValueError(f"{config.input} was annotated with taxonomy {manifest['taxonomy_version']}, "
                         f"config.taxonomy={config.taxonomy!r} is {taxonomy.version}; use the same taxonomy")
    files = [storage.join(config.input, f["path"]) for f in manifest["files"] if f["path"].startswith("data/")]
    if not files:
        raise ValueError(f"{config.input}: manifest lists no data/ files")
    fs, _ = storage.filesystem(files[0])
    paths = [storage.filesystem(f)[1] for f in files]
    ds = ray.data.read_parquet(paths, filesystem=fs).select_columns(COLUMNS)
    if config.heldout_fraction > 0:
        # The evaluation stage uses exactly these rows; a model must never have trained on them.
        seed, fraction = config.heldout_seed, config.heldout_fraction
        ds = ds.filter(lambda row: not is_heldout(row["id"], seed, fraction))
    if config.max_examples is not None:
        ds = ds.sort("id").limit(config.max_examples)
    return ds.materialize(), manifest


def _tokenizer_files(config: TrainConfig, rows: list[dict], manifest_id: str, taxonomy) -> dict[str, bytes] | None:
    """The corpus BPE (full marker blocks rendered in), as {file name: bytes}; None for pretrained models."""
    if config.model.kind != "tiny":
        return None

    # A deterministic sample spread over all sources (ids start with the source name: hash them).
    sample = sorted(rows, key=lambda r: hashlib.sha256(r["id"].encode()).digest())[: config.model.tokenizer_rows]

    def texts():
        for r in sample:
            markers = json.loads(r["markers"] or "{}")
            yield chat_text(render_prompt(r["prompt"], markers, taxonomy), render_completion(markers, r["response"], taxonomy))

    key = cache_key(f"{manifest_id}:{config.model.tokenizer_rows}", config.model.vocab_size, taxonomy.version)
    folder = cached_bpe(config.model.tokenizer_cache, key, texts, config.model.vocab_size)
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def _check_resources(config: TrainConfig) -> None:
    import ray

    have = ray.cluster_resources()
    need_cpu = config.num_workers * config.cpus_per_worker
    if have.get("CPU", 0) < need_cpu or (config.use_gpu and have.get("GPU", 0) < config.num_workers):
        raise RuntimeError(f"train needs {need_cpu} CPUs{f' and {config.num_workers} GPUs' if config.use_gpu else ''}"
                           f" but the cluster has {have.get('CPU', 0)} CPUs / {have.get('GPU', 0)} GPUs; "
                           "lower num_workers / cpus_per_worker (an over-asking trainer waits forever)")
    if config.worker_resources:  # pinned workers must fit the nodes that offer the resource, per node
        from treasure.cluster import check_placement

        check_placement([config.resources_per_worker] * config.num_workers, "training workers",
                        "lower train.num_workers / cpus_per_worker, or start nodes with train.worker_resources")


def _trainer(config: TrainConfig, ds, loop_config: dict, run_name: str):
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from treasure.train.loop import train_loop_per_worker

    # A filesystem with no keys in it: each process (driver, workers) resolves credentials from its own
    # environment or the cloud's chain when Ray unpickles it, so session tokens work and no secret
    # travels in the pickled run config (issue 16 #5).
    fs, path = storage.filesystem(storage.join(config.output, RAY_DIR))
    resources = config.resources_per_worker
    return TorchTrainer(
        train_loop_per_worker, train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if config.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=config.num_workers, use_gpu=config.use_gpu, resources_per_worker=resources),
        run_config=RunConfig(name=run_name, storage_path=path, storage_filesystem=fs,
                             failure_config=FailureConfig(max_failures=config.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=config.keep_checkpoints)),
        datasets={"train": ds},
    )


def _download(checkpoint) -> Path:
    """A local copy of Ray's final checkpoint without the resume state: the published checkpoint."""
    local = Path(tempfile.mkdtemp(prefix="treasure-final-"))
    checkpoint.to_directory(str(local))
    (local / TRAIN_STATE).unlink(missing_ok=True)
    return local


def _publish(config: TrainConfig, local: Path, extra: dict) -> dict:
    """Copy the checkpoint files (the LoRA `adapter/` folder included) to `output`, then commit its manifest (last)."""
    files = []
    for f in sorted(p for p in local.rglob("*") if p.is_file()):
        target = storage.join(config.output, f.relative_to(local).as_posix())
        storage.write_bytes(target, f.read_bytes())
        files.append(target)
    return storage.commit_manifest(config.output, files, extra)


def _write_card(config: TrainConfig, local: Path, taxonomy, metrics: dict, lineage: dict) -> str:
    """The model card (README.md) written into the checkpoint before it is published; returns its text."""
    from treasure.models.model_card import render

    card = render(json.loads((local / META).read_text()), taxonomy, name=config.model_name, metrics=metrics,
                  lineage=lineage)
    (local / MODEL_CARD).write_text(card, encoding="utf-8")
    return card


def _push(config: TrainConfig, summary: dict) -> dict:
    """push_to_hub: the published checkpoint (or its adapter) sent to the configured target."""
    if config.push_to_hub:
        from treasure.models.export import export

        summary["pushed"] = export(config.output, config.push_to_hub, adapter_only=config.push_adapter_only)
    return summary


def _register(run_id: str, name: str, taxonomy, markers: bool, card: str = "") -> str:
    """A registered model version whose source is the run's checkpoint artifact; taxonomy as tags."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    try:
        client.create_registered_model(name, tags={"taxonomy_version": taxonomy.version})
    except MlflowException as e:
        if "already exists" not in str(e).lower() and "RESOURCE_ALREADY_EXISTS" not in str(e):
            raise
    source = f"{mlflow.get_run(run_id).info.artifact_uri}/{MODEL_PATH}"
    mv = client.create_model_version(name, source=source, run_id=run_id, description=card, tags={
        "taxonomy_version": taxonomy.version, "taxonomy_file": f"{MODEL_PATH}/artifacts/{MODEL_ARTIFACT}/{TAXONOMY}",
        "markers": str(markers).lower()})
    return mv.version


def run(config: TrainConfig, *, parent_run_id: str | None = None) -> dict:
    import mlflow

    from treasure import tracking

    done = storage.read_manifest(config.output)
    if done is not None and done.get("config") == _config_key(config) and not config.force:
        return _push(config, {**done["summary"], "manifest_id": done["manifest_id"]})
    _check_resources(config)
    if done is not None:  # retraining into a committed folder: uncommit first, so no reader mixes old and new files
        storage.delete(storage.join(config.output, storage.MANIFEST))
    taxonomy = load_taxonomy(config.taxonomy)
    ds, data_manifest = _read_dataset(config, taxonomy)
    rows = ds.take_all()
    if not rows:
        raise ValueError(f"{config.input} holds no rows")
    data_manifest_id = data_manifest["manifest_id"]
    config_hash = hashlib.sha256(json.dumps(_config_key(config), sort_keys=True).encode()).hexdigest()[:12]
    run_name = f"{config.model_name}-{config_hash}"
    if config.force:  # a forced rerun starts over instead of resuming the previous run's checkpoints
        storage.delete(storage.join(config.output, RAY_DIR, run_name))
    loop_config = {
        "train": config.model_dump(mode="json"),
        "taxonomy_yaml": taxonomy.to_yaml(),
        "tokenizer_files": _tokenizer_files(config, rows, data_manifest_id, taxonomy),
        "data_manifest_id": data_manifest_id,
        "quality_reference": quality_reference(rows),
    }
    lineage = {"input": config.input, "data_manifest_id": data_manifest_id, "rows": len(rows)}
    with tracking.run(config.experiment, run_name, config=config, taxonomy=taxonomy, lineage=lineage,
                      parent_run_id=parent_run_id, tags={"markers": str(config.markers).lower()}) as active:
        run_id = active.info.run_id
        loop_config["mlflow"] = {"tracking_uri": tracking.tracking_uri(), "run_id": run_id}
        t0 = time.time()
        result = _trainer(config, ds, loop_config, run_name).fit()
        if result.error is not None:
            raise RuntimeError(f"training failed after {config.max_failures} retries: {result.error}") from result.error
        seconds = time.time() - t0
        client = mlflow.MlflowClient()
        tps = [m.value for m in client.get_metric_history(run_id, "tokens_per_second")]
        metrics = {"final_loss": float(result.metrics["loss"]), "steps": int(result.metrics["step"]),
                   "train_seconds": round(seconds, 1), "rows": len(rows),
                   "mean_tokens_per_second": round(sum(tps) / len(tps), 1) if tps else 0.0}
        mlflow.log_metrics({k: v for k, v in metrics.items() if k != "rows"})
        summary = {"output": config.output, "mlflow_run_id": run_id, "metrics": metrics,
                   "markers": config.markers, "taxonomy_version": taxonomy.version,
                   "data_manifest_id": data_manifest_id, "registered_model": config.model_name}
        extra = {"config": _config_key(config), "markers": config.markers, "taxonomy_version": taxonomy.version,
                 "data_manifest_id": data_manifest_id, "step": metrics["steps"]}
        local = _download(result.checkpoint)
        card = _write_card(config, local, taxonomy, metrics, lineage)
        from treasure.models.mlflow_model import log_model

        log_model(run_id, local)  # a real MLflow model (pyfunc) holding the checkpoint and its card
        if config.register:
            summary["model_version"] = _register(run_id, config.model_name, taxonomy, config.markers, card)
        manifest = _publish(config, local, {**extra, "summary": summary})
        summary["manifest_id"] = manifest["manifest_id"]
    return _push(config, summary)
