"""Where a secret must never show up, read the way an outsider would read it (issue 16 #5).

Placeholder credentials for the session's moto S3 server carry canary values in their secret parts
(moto accepts any credentials); `leaks(secret, ...)` lists the places that show one: the dashboard's
Serve, job, actor and task views (runtime envs included), every file of Ray's session logs, and the
params, tags and text artifacts of MLflow runs.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

AWS_SECRET_CANARY = f"canary-aws-secret-{uuid.uuid4().hex}"
AWS_SESSION_CANARY = f"canary-aws-session-{uuid.uuid4().hex}"


def dashboard_views(ray) -> dict[str, str]:
    """What anyone who reaches the dashboard reads: applications, jobs, actors and tasks in detail."""
    import httpx
    from ray.util.state import list_actors, list_jobs, list_tasks

    dashboard = ray._private.worker.get_dashboard_url()
    views = {path: httpx.get(f"http://{dashboard}{path}", timeout=30).text
             for path in ("/api/serve/applications/", "/api/jobs/")}
    # This process's own cluster, named: another Ray on the machine must not make the state API guess.
    at = {"address": ray.get_runtime_context().gcs_address}
    views["actors"] = json.dumps(list_actors(detail=True, limit=10000, raise_on_missing_output=False, **at), default=str)
    views["tasks"] = json.dumps(list_tasks(detail=True, limit=10000, raise_on_missing_output=False, **at), default=str)
    views["jobs"] = json.dumps(list_jobs(detail=True, raise_on_missing_output=False, **at), default=str)
    return views


def ray_logs(ray) -> dict[str, str]:
    """Every file under the Ray session's log folder (workers' stdout/stderr, raylet, GCS, dashboard)."""
    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    return {str(f): f.read_bytes().decode("utf-8", "replace") for f in sorted(logs.rglob("*")) if f.is_file()}


def mlflow_run_texts(run_ids: list[str]) -> dict[str, str]:
    """Params, tags, metric names and every artifact under 1 MB of the given MLflow runs."""
    import mlflow

    client, out = mlflow.MlflowClient(), {}
    for run_id in run_ids:
        run = client.get_run(run_id)
        out[f"mlflow:{run_id}:data"] = json.dumps({"params": run.data.params, "tags": run.data.tags,
                                                  "metrics": list(run.data.metrics)})
        root = Path(mlflow.artifacts.download_artifacts(run_id=run_id))
        for f in sorted(root.rglob("*")):
            if f.is_file() and f.stat().st_size < 1_000_000:
                out[f"mlflow:{run_id}:{f.relative_to(root)}"] = f.read_bytes().decode("utf-8", "replace")
    return out


def leaks(secret: str, *places: dict[str, str]) -> list[str]:
    """The names of the places whose text holds `secret`."""
    return [name for group in places for name, text in group.items() if secret in text]
