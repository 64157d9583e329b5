"""treasure.tracking: a tracking server that does not answer is a clear TrackingUnavailable, and only
errors that name the tracking server count as its outage."""

from __future__ import annotations

import socket
import time

import pytest

from treasure import tracking


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket closes


def test_an_unreachable_server_is_a_clear_error_not_a_traceback(monkeypatch):
    url = f"http://127.0.0.1:{_closed_port()}"
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
