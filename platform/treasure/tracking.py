"""MLflow tracking: where runs go, and what every run logs (resolved config, taxonomy, lineage).

Environment settings, not config: ``MLFLOW_TRACKING_URI`` (default: a sqlite store under
``runs/``), ``MLFLOW_ARTIFACT_ROOT`` (default: ``runs/mlartifacts``; may be ``s3://...``).
A pipeline opens one parent run per invocation and nested runs per stage, so two pipeline runs
compare side by side in the MLflow UI (``mlflow ui --backend-store-uri sqlite:///runs/mlflow.db``).
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from pydantic import BaseModel

from treasure.config import flatten

DEFAULT_DIR = Path(os.environ.get("TREASURE_RUNS_DIR", "runs"))


def tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    DEFAULT_DIR.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(DEFAULT_DIR / 'mlflow.db').resolve()}"


def artifact_root() -> str:
    root = os.environ.get("MLFLOW_ARTIFACT_ROOT")
    return root or (DEFAULT_DIR / "mlartifacts").resolve().as_uri()


def experiment_id(name: str) -> str:
    """Get or create an experiment with an explicit artifact location (sqlite stores need one)."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    server = tracking_uri().startswith("http")
    # A tracking server chooses (and proxies) its own artifact store unless told otherwise.
    location = None if server and not os.environ.get("MLFLOW_ARTIFACT_ROOT") else f"{artifact_root()}/{name}"
    return mlflow.create_experiment(name, artifact_location=location)


def _params(config: BaseModel | dict) -> dict[str, str]:
    data = config.model_dump(mode="json") if isinstance(config, BaseModel) else config
    # MLflow caps a param value at 6000 characters; keep the full config as an artifact too.
    return {k: json.dumps(v) if not isinstance(v, str) else v for k, v in flatten(data).items()}


@contextmanager
def run(
    experiment: str,
    run_name: str,
    *,
    config: BaseModel | dict,
    taxonomy=None,
    lineage: dict[str, Any] | None = None,
    nested: bool = False,
    parent_run_id: str | None = None,
    tags: dict[str, str] | None = None,
) -> Iterator[Any]:
    """Start an MLflow run that logs the resolved config, taxonomy version/file and data lineage."""
    import mlflow

    all_tags = dict(tags or {})
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    # The pipeline's parent run is active in this process when a stage runs: MLflow needs nested=True.
    nested = nested or (parent_run_id is not None and mlflow.active_run() is not None)
    try:
        exp_id = experiment_id(experiment)
        with _started(mlflow, exp_id, run_name, nested, all_tags, config, taxonomy, lineage) as active:
            yield active
    except Exception as e:
        if _unreachable(e):
            raise TrackingUnavailable(
                f"the MLflow tracking server at {tracking_uri()} did not answer (after MLflow's retries) while the "
                f"{run_name!r} run logged to it: the stage failed and committed nothing after that point; its finished "
                f"work (e.g. annotate's shards, training checkpoints) is kept, so rerunning once the server is back "
                f"resumes it. A run already started may show as RUNNING in MLflow: the server could not be told it "
                f"failed.") from e
        raise


class TrackingUnavailable(RuntimeError):
    """The MLflow tracking server could not be reached (after MLflow's own retries) during a stage."""


def _unreachable(error: BaseException) -> bool:
    """Whether an exception (or one it came from) is MLflow's client giving up on the tracking server.

    Only errors that name the tracking server's own URL count: an S3 or LLM endpoint that fails
    the same way (urllib3's "Max retries exceeded") is not the tracking server.
    """
    uri = tracking_uri().rstrip("/")
    if not uri.startswith(("http://", "https://")):
        return False
    seen = error
    while seen is not None:
        text = str(seen)
        if f"API request to {uri}" in text and "failed with" in text:  # rest_utils: connection error or timeout
            return True
        seen = seen.__cause__ or seen.__context__
    return False


@contextmanager
def _started(mlflow, exp_id, run_name, nested, all_tags, config, taxonomy, lineage):
    with mlflow.start_run(experiment_id=exp_id, run_name=run_name, nested=nested, tags=all_tags) as active:
        params = _params(config)
        for i in range(0, len(params), 90):  # log_params takes at most 100 per call
            mlflow.log_params(dict(list(params.items())[i: i + 90]))
        data = config.model_dump(mode="json") if isinstance(config, BaseModel) else config
        mlflow.log_dict(data, "config/resolved.json")
        if taxonomy is not None:
            mlflow.set_tag("taxonomy_version", taxonomy.version)
            mlflow.log_text(taxonomy.to_yaml(), "config/taxonomy.yaml")
        if lineage:
            log_lineage(lineage)
        yield active


def log_lineage(lineage: dict[str, Any]) -> None:
    """Data lineage on the active run: the whole dict as an artifact, its scalar leaves as tags
    (for stages that learn their inputs while reading them, e.g. normalize's file checksums)."""
    import mlflow

    mlflow.log_dict(lineage, "config/lineage.json")
    for k, v in flatten(lineage).items():
        if isinstance(v, (str, int, float)):
            mlflow.set_tag(f"lineage.{k}", str(v)[:5000])


# The model registry: the one place that creates versions and sets their tags, alias and card
# (the train stage, the tune search's best trial and the pipeline's register step call these).

def register_version(name: str, *, source: str, run_id: str, tags: dict[str, str], description: str = "",
                     model_tags: dict[str, str] | None = None) -> str:
    """A new version of registered model `name` (created with `model_tags` when missing) whose
    source is `source` (an MLflow model URI of `run_id`); returns the version number."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri())
    try:
        client.create_registered_model(name, tags=model_tags or {})
    except MlflowException as e:
        if "already exists" not in str(e).lower() and "RESOURCE_ALREADY_EXISTS" not in str(e):
            raise
    return client.create_model_version(name, source=source, run_id=run_id, description=description, tags=tags).version


def update_version(name: str, version: str, *, tags: dict[str, Any] | None = None, alias: str | None = None,
                   description: str | None = None) -> None:
    """Tags, an alias and/or a new description (the model card) on an existing version."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri())
    for key, value in (tags or {}).items():
        client.set_model_version_tag(name, str(version), key, str(value))
    if alias:
        client.set_registered_model_alias(name, alias, str(version))
    if description is not None:
        client.update_model_version(name, str(version), description=description)
