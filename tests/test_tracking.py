"""treasure.tracking: what every run logs (config, taxonomy, lineage) on a private sqlite store, where
runs go by default; a tracking server that does not answer is a clear TrackingUnavailable, and only
errors that name the tracking server count as its outage."""

from __future__ import annotations

import json
import time

import pytest
from ports import free_port

from treasure import tracking


def test_an_unreachable_server_is_a_clear_error_not_a_traceback(monkeypatch):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    for key, value in {"MLFLOW_TRACKING_URI": url, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
                       "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}.items():
        monkeypatch.setenv(key, value)
    t0 = time.monotonic()
    with pytest.raises(tracking.TrackingUnavailable, match=f"tracking server at {url} did not answer") as caught:
        with tracking.run("tracking-tests", "annotate", config={"a": 1}):
            pytest.fail("the run must not start without a server")
    assert "'annotate'" in str(caught.value) and "rerunning once the server is back resumes it" in str(caught.value)
    assert time.monotonic() - t0 < 60


def test_only_errors_naming_the_tracking_server_count(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    mlflow_side = RuntimeError("API request to http://127.0.0.1:5000/api/2.0/mlflow/runs/log-batch failed with exception "
                               "HTTPConnectionPool(host='127.0.0.1', port=5000): Max retries exceeded")
    assert tracking._unreachable(mlflow_side)
    try:  # the outage a few causes down the chain still counts
        try:
            raise mlflow_side
        except RuntimeError as e:
            raise ValueError("while publishing") from e
    except ValueError as wrapped:
        assert tracking._unreachable(wrapped)
    s3_side = ConnectionError("HTTPConnectionPool(host='127.0.0.1', port=9000): Max retries exceeded")
    assert not tracking._unreachable(s3_side)  # an S3 or LLM endpoint's outage is not the tracking server's
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///x.db")
    assert not tracking._unreachable(mlflow_side)


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A fresh sqlite MLflow store with local artifacts; yields the artifact root."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("MLFLOW_ARTIFACT_ROOT", (tmp_path / "artifacts").as_uri())
    yield (tmp_path / "artifacts").as_uri()
    while mlflow.active_run() is not None:
        mlflow.end_run()
    mlflow.set_tracking_uri(None)  # tracking.run pinned MLflow's process-wide URI to this store


def _artifact(run_id: str, path: str) -> str:
    import mlflow

    return open(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path)).read()


def test_run_logs_config_taxonomy_lineage_and_tags(store, taxonomy):
    from mlflow import MlflowClient

    from treasure.config import StrictModel

    class Inner(StrictModel):
        rate: float = 0.5
        names: list[str] = ["a", "b"]

    class Config(StrictModel):
        output: str = "s3://bucket/out"
        seed: int = 7
        inner: Inner = Inner()
        note: str | None = None

    lineage = {"input": {"uri": "s3://bucket/in", "manifest_id": "abc123"}, "rows": 12, "files": ["a", "b"]}
    with tracking.run("tracking-tests", "annotate", config=Config(), taxonomy=taxonomy, lineage=lineage,
                      tags={"stage": "annotate"}) as active:
        run_id = active.info.run_id
    client = MlflowClient()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "annotate"
    assert client.get_experiment(run.info.experiment_id).artifact_location == f"{store}/tracking-tests"
    # Params: the flattened config, non-strings JSON-encoded (so 7 and "7" stay apart).
    assert run.data.params == {"output": "s3://bucket/out", "seed": "7", "inner.rate": "0.5",
                               "inner.names": '["a", "b"]', "note": "null"}
    assert json.loads(_artifact(run_id, "config/resolved.json")) == Config().model_dump(mode="json")
    assert _artifact(run_id, "config/taxonomy.yaml") == taxonomy.to_yaml()
    assert json.loads(_artifact(run_id, "config/lineage.json")) == lineage
    tags = run.data.tags
    assert tags["taxonomy_version"] == taxonomy.version and tags["stage"] == "annotate"
    # Scalar lineage leaves are tags (searchable); lists stay in the artifact only.
    assert {k: v for k, v in tags.items() if k.startswith("lineage.")} == {
        "lineage.input.uri": "s3://bucket/in", "lineage.input.manifest_id": "abc123", "lineage.rows": "12"}


def test_a_large_config_is_logged_whole(store):
    """MLflow takes at most 100 params per call: a config of 250 keys is logged in batches."""
    from mlflow import MlflowClient

    config = {f"k{i:03d}": i for i in range(250)}
    with tracking.run("tracking-tests", "big", config=config) as active:
        pass
    assert MlflowClient().get_run(active.info.run_id).data.params == {k: str(v) for k, v in config.items()}


def test_a_stage_run_nests_under_its_parent_and_a_failure_is_recorded(store):
    import mlflow
    from mlflow import MlflowClient

    with tracking.run("tracking-tests", "pipeline", config={}) as parent:
        # The parent is active in this process: the stage's run must nest (MLflow refuses otherwise).
        with tracking.run("tracking-tests", "train", config={"a": 1}, parent_run_id=parent.info.run_id) as child:
            assert mlflow.active_run().info.run_id == child.info.run_id
        assert mlflow.active_run().info.run_id == parent.info.run_id
        with pytest.raises(RuntimeError, match="work failed"):
            with tracking.run("tracking-tests", "evaluate", config={}, parent_run_id=parent.info.run_id) as failed:
                raise RuntimeError("work failed")  # not the tracking server's outage: raised as it is
    client = MlflowClient()
    assert client.get_run(child.info.run_id).data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert client.get_run(failed.info.run_id).info.status == "FAILED"
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"
    assert tracking.experiment_id("tracking-tests") == client.get_run(child.info.run_id).info.experiment_id


def test_runs_go_under_the_runs_folder_by_default(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_ARTIFACT_ROOT", raising=False)
    monkeypatch.setattr(tracking, "DEFAULT_DIR", tmp_path / "runs")
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    assert (tmp_path / "runs").is_dir()  # sqlite needs the folder to exist
    assert tracking.artifact_root() == (tmp_path / "runs" / "mlartifacts").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    monkeypatch.setenv("MLFLOW_ARTIFACT_ROOT", "s3://bucket/mlflow")
    assert (tracking.tracking_uri(), tracking.artifact_root()) == ("http://mlflow:5000", "s3://bucket/mlflow")
