"""Registered models are real MLflow models (treasure.models.mlflow_model): `mlflow.pyfunc.load_model`
answers with markers, the model folder carries its own code, `mlflow models serve` answers over HTTP.

The model is tests/marker_lessons.py's marked model: it has learnt three answers by heart per length,
so what comes back can be checked exactly (greedy decoding)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import httpx
import pytest
from marker_lessons import LESSONS, PROMPT

_, TASK, DOMAIN, CONCISE, MEDIUM = LESSONS[0]
INFERRED = {"task": TASK, "domain": DOMAIN, "language": "English"}


@pytest.fixture(scope="module")
def registered(tmp_path_factory, lessons_checkpoint):
    """(models:/ URI, tracking URI, the model's local folder) of the lessons model, logged and registered
    on a private sqlite MLflow store exactly as the train stage does it."""
    import mlflow
    from mlflow import MlflowClient

    from treasure.models.mlflow_model import log_model

    root = tmp_path_factory.mktemp("mlflow-model")
    checkpoint = lessons_checkpoint  # trained once per session (tests/conftest.py)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        exp = mlflow.create_experiment("pyfunc", artifact_location=(root / "artifacts").as_uri())
        with mlflow.start_run(experiment_id=exp) as run:
            pass
        source = log_model(run.info.run_id, checkpoint)
        client = MlflowClient()
        client.create_registered_model("lessons")
        client.create_model_version("lessons", source=source, run_id=run.info.run_id)
        local = mlflow.artifacts.download_artifacts(artifact_uri="models:/lessons/1", dst_path=str(root / "download"))
        yield "models:/lessons/1", uri, local


def test_pyfunc_answers_with_markers_and_records_bad_rows(registered, monkeypatch):
    import mlflow
    import pandas as pd

    uri, tracking, _ = registered
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking)
    model = mlflow.pyfunc.load_model(uri)
    rows = pd.DataFrame([{"prompt": PROMPT, "markers": {"length_bucket": "concise"}},
                         {"prompt": PROMPT, "markers": json.dumps({"length_bucket": "medium"})},  # a JSON column
                         {"prompt": PROMPT, "markers": {"length_bucket": "huge"}},
                         {"prompt": "", "markers": {}}])
    out = model.predict(rows, params={"max_tokens": 160})
    assert list(out.columns) == ["text", "markers", "finish_reason", "usage", "error"] and len(out) == 4
    concise, medium, huge, empty = out.to_dict("records")
    assert concise["text"] == CONCISE and medium["text"] == MEDIUM
    assert concise["markers"] == {"requested": {"length_bucket": "concise"}, "inferred": INFERRED}
    assert medium["markers"]["inferred"] == INFERRED and concise["error"] is None and concise["finish_reason"] == "stop"
    assert huge["text"] is None and "length_bucket" in huge["error"] and "'huge' is not one of" in huge["error"]
    assert empty["text"] is None and empty["error"].startswith("prompt:")
    # A bare prompt: the model infers every marker, the length included.
    (alone,) = model.predict([{"prompt": PROMPT}], params={"max_tokens": 160}).to_dict("records")
    assert set(alone["markers"]["inferred"]) == {"length_bucket", *INFERRED} and alone["text"] in (CONCISE, MEDIUM)


def test_the_model_folder_carries_its_code_and_loads_anywhere(registered, tmp_path):
    """A copy of the model folder loads in a fresh process from an unrelated folder: the package comes
    from the model's own code/ (MLflow puts it first on sys.path), not from this repository."""
    _, _, local = registered
    copy = tmp_path / "elsewhere" / "model"
    shutil.copytree(local, copy)
    # `treasure` is imported only after the load: the model's code/ must be what provides it.
    probe = ("import mlflow; m = mlflow.pyfunc.load_model(%r); import treasure; "
             "r = m.predict([{'prompt': %r, 'markers': {'length_bucket': 'concise'}}], params={'max_tokens': 160}); "
             "print(treasure.__file__); print(r.loc[0, 'text'])") % (str(copy), PROMPT)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MLFLOW_TRACKING_URI")}
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    where, text = out.stdout.strip().splitlines()[-2:]
    assert where.startswith(str(copy / "code" / "treasure")) and text == CONCISE
    assert (copy / "MLmodel").exists() and (copy / "artifacts" / "checkpoint" / "taxonomy.yaml").exists()


@pytest.mark.slow
def test_mlflow_models_serve_answers_one_request(registered, tmp_path):
    from ports import free_port

    _, _, local = registered
    port = free_port()
    log = open(tmp_path / "serve.log", "wb")
    bin_dir = os.path.dirname(sys.executable)  # the scoring server runs `uvicorn` from PATH
    server = subprocess.Popen([os.path.join(bin_dir, "mlflow"), "models", "serve", "-m", local, "--env-manager", "local",
                               "--host", "127.0.0.1", "--port", str(port)], stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True, env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"})
    try:
        deadline, body = time.time() + 300, None
        while time.time() < deadline and server.poll() is None:
            try:
                r = httpx.post(f"http://127.0.0.1:{port}/invocations", timeout=120, json={
                    "dataframe_records": [{"prompt": PROMPT, "markers": {"length_bucket": "concise"}}],
                    "params": {"max_tokens": 160}})
                body = r.json()
                break
            except httpx.TransportError:
                time.sleep(1)
        assert body is not None, (tmp_path / "serve.log").read_text()[-3000:]
        (answer,) = body["predictions"]
        assert answer["text"] == CONCISE and answer["markers"]["inferred"] == INFERRED, body
    finally:
        os.killpg(server.pid, 9)
        server.wait(30)
