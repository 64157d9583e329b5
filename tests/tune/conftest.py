"""Tune test fixtures: one MLflow sqlite store shared by the area's tests (creating one costs seconds)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tune_mlflow_store(tmp_path_factory):
    return tmp_path_factory.mktemp("tune_mlflow")


@pytest.fixture
def tune_mlflow(tune_mlflow_store, monkeypatch):
    """MLFLOW_TRACKING_URI / MLFLOW_ARTIFACT_ROOT at the area's store, for one test (restored after it)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tune_mlflow_store / 'mlflow.db'}")
    monkeypatch.setenv("MLFLOW_ARTIFACT_ROOT", (tune_mlflow_store / "artifacts").as_uri())
    return tune_mlflow_store
