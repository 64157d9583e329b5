"""Fixtures of the annotate tests (the corpus builders live in annotate_corpus.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def annotate_mlflow(mlflow_store):
    """The session's private MLflow store (tests/conftest.py); the name is kept for the reliability scenarios."""
    return mlflow_store
