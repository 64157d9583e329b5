"""The train stage: annotated Parquet → Ray Data → TorchTrainer → published HF checkpoint + MLflow model.

``run(config)`` assumes Ray is initialised. It reads the committed annotated dataset with Ray Data
(materialized: a lazy pipeline handed to a TorchTrainer on 2 CPUs can starve its read tasks),
trains the corpus BPE tokenizer once per data manifest (tiny model), runs the worker loop
(treasure.train.loop) with FailureConfig retries, and publishes the last checkpoint at
``output`` through the stage contract (treasure.stage: staged files, ``manifest.json`` last; an
``output`` committed with the same config is returned as is unless ``force``). Ray's own
checkpoints stay under ``output/_ray/<run>/checkpoint_step_N`` (treasure.models.checkpoint falls
back to them).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

from treasure import storage
from treasure.resources import check_pools
from treasure.stage import Attempt, Plan, Result, Stage
from treasure.heldout import is_heldout
from treasure.taxonomy import load_taxonomy
from treasure.template import render_completion, render_prompt
from treasure.models.checkpoint import META, MODEL_ARTIFACT, MODEL_CARD, MODEL_PATH, RAY_DIR, TAXONOMY, TRAIN_STATE
from treasure.train.resume import quality_reference
from treasure.train.config import TrainConfig
from treasure.train.tokenizer_bpe import cache_key, cached_bpe, chat_text

COLUMNS = ["id", "prompt", "response", "language", "markers"]


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
        scaling_config=ScalingConfig(num_workers=config.pool.count, use_gpu=config.use_gpu, resources_per_worker=resources),
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


def _stage_files(local: Path, attempt: Attempt) -> None:
    """The checkpoint files (the LoRA `adapter/` folder included) into the attempt's staging."""
    for f in sorted(p for p in local.rglob("*") if p.is_file()):
        storage.write_bytes(attempt.path(f.relative_to(local).as_posix()), f.read_bytes())


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


def plan_train(config: TrainConfig) -> Plan:
    """Resources checked, the annotated rows read (held-out rows left out), the run named by the config."""
    check_pools({"train.pool": config.pool}, "lower train.pool.count / num_cpus / num_gpus, or start nodes with "
                                             "the resources train.pool.resources names (an over-asking trainer waits forever)")
    taxonomy = load_taxonomy(config.taxonomy)
    ds, data_manifest = _read_dataset(config, taxonomy)
    rows = ds.take_all()
    if not rows:
        raise ValueError(f"{config.input} holds no rows")
    data_manifest_id = data_manifest["manifest_id"]
    lineage = {"input": config.input, "data_manifest_id": data_manifest_id, "rows": len(rows)}
    return Plan(run_name=f"{config.model_name}-{STAGE.key_hash(config)}", taxonomy=taxonomy, lineage=lineage,
                tags={"markers": str(config.markers).lower()}, state={"ds": ds, "rows": rows, "data_manifest_id": data_manifest_id})


def work(config: TrainConfig, plan: Plan, attempt: Attempt) -> Result:
    """Train on Ray Train, log the MLflow model, register it, stage the checkpoint with its card."""
    import mlflow

    from treasure import tracking

    taxonomy, rows, data_manifest_id = plan.taxonomy, plan.state["rows"], plan.state["data_manifest_id"]
    if config.force:  # a forced rerun starts over instead of resuming the previous run's checkpoints
        storage.delete(storage.join(config.output, RAY_DIR, plan.run_name))
    loop_config = {
        "train": config.model_dump(mode="json"),
        "taxonomy_yaml": taxonomy.to_yaml(),
        "tokenizer_files": _tokenizer_files(config, rows, data_manifest_id, taxonomy),
        "data_manifest_id": data_manifest_id,
        "quality_reference": quality_reference(rows),
        "mlflow": {"tracking_uri": tracking.tracking_uri(), "run_id": attempt.run_id},
    }
    result = _trainer(config, plan.state["ds"], loop_config, plan.run_name).fit()
    if result.error is not None:
        raise RuntimeError(f"training failed after {config.max_failures} retries: {result.error}") from result.error
    client = mlflow.MlflowClient()
    tps = [m.value for m in client.get_metric_history(attempt.run_id, "tokens_per_second")]
    metrics = {"final_loss": float(result.metrics["loss"]), "steps": int(result.metrics["step"]),
               "train_seconds": attempt.seconds(), "rows": len(rows),
               "mean_tokens_per_second": round(sum(tps) / len(tps), 1) if tps else 0.0}
    mlflow.log_metrics({k: v for k, v in metrics.items() if k != "rows"})
    summary = {"metrics": metrics, "markers": config.markers, "taxonomy_version": taxonomy.version,
               "data_manifest_id": data_manifest_id, "registered_model": config.model_name}
    local = _download(result.checkpoint)
    card = _write_card(config, local, taxonomy, metrics, plan.lineage)
    from treasure.models.mlflow_model import log_model

    log_model(attempt.run_id, local)  # a real MLflow model (pyfunc) holding the checkpoint and its card
    if config.register:
        summary["model_version"] = tracking.register_version(
            config.model_name, source=f"{mlflow.get_run(attempt.run_id).info.artifact_uri}/{MODEL_PATH}",
            run_id=attempt.run_id, description=card, model_tags={"taxonomy_version": taxonomy.version}, tags={
                "taxonomy_version": taxonomy.version, "markers": str(config.markers).lower(),
                "taxonomy_file": f"{MODEL_PATH}/artifacts/{MODEL_ARTIFACT}/{TAXONOMY}"})
    _stage_files(local, attempt)
    return Result(summary=summary, manifest={"markers": config.markers, "taxonomy_version": taxonomy.version,
                                             "data_manifest_id": data_manifest_id, "step": metrics["steps"]})


# Where a copy is pushed changes nothing in what is trained.
STAGE = Stage("train", plan=plan_train, work=work, key_exclude=("push_to_hub", "push_adapter_only"), after=_push)


def run(config: TrainConfig, *, parent_run_id: str | None = None) -> dict:
    """Train `config` into `config.output` through the stage contract (treasure.stage); pushes a
    copy where `push_to_hub` says, for a fresh or a reused checkpoint alike."""
    return STAGE.run(config, parent_run_id=parent_run_id)
