"""Tune test fixtures: one MLflow sqlite store for the area (creating one costs seconds), toy configs."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def tune_mlflow(tmp_path_factory):
    """MLFLOW_TRACKING_URI / MLFLOW_ARTIFACT_ROOT pointing at one sqlite store for all tune tests."""
    root = tmp_path_factory.mktemp("tune_mlflow")
    old = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_ARTIFACT_ROOT")}
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    os.environ["MLFLOW_ARTIFACT_ROOT"] = (root / "artifacts").as_uri()
    yield root
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v

