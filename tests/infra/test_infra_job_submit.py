"""`ray job submit` of the real pipeline to a private `ray start --head` on 127.0.0.1.

Exactly what a user types (README / infra/README.md), CI-sized:

    ray job submit --address http://127.0.0.1:<port> --working-dir . --runtime-env-json <runtime_env_for_job> \\
        -- python pipelines/full.py --config pipelines/configs/ci.yaml pipeline.root=<tmp>

The package reaches the job through the runtime_env of treasure.cluster; MLflow goes to a sqlite
store in the test's temp dir (MLFLOW_TRACKING_URI forwarded by the runtime_env). Checked: the job
succeeds, `ray job logs` shows every stage's progress line and the final summary table, every
stage committed its output (manifests, checkpoints, report), and MLflow holds the parent run with
one nested run per stage and the registered marked model.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from pathlib import Path

from infra_processes import BIN, REPO, ray_env

from treasure.cluster import runtime_env_for_job
from treasure.pipeline import STAGES

OUTPUTS = ("normalized", "annotated", "checkpoints/baseline", "checkpoints/marked", "eval")


def ray_cli(*args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ray"), *args], env=ray_env(), cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def submit(address: str, renv: dict, entrypoint: list[str]) -> tuple[str, subprocess.CompletedProcess]:
    deadline = time.time() + 120
    # Transient answers of a head that is still starting (agent not registered yet, or the dashboard
    # dropping the upload connection on a busy machine): Ray's own advice is to submit again.
    transient = ("No available agent to submit job", "Connection aborted", "RemoteDisconnected")
    while True:
        job_id = f"infra-ci-{uuid.uuid4().hex[:8]}"  # a fresh id: an aborted attempt may have registered its id
        done = ray_cli("job", "submit", "--address", address, "--submission-id", job_id, "--working-dir", ".",
                       "--runtime-env-json", json.dumps(renv), "--", *entrypoint, timeout=480)
        if done.returncode == 0 or not any(t in done.stderr for t in transient) or time.time() > deadline:
            return job_id, done
        time.sleep(2)


def test_job_submit_runs_the_ci_pipeline(ray_head):
    tmp = Path(ray_head["temp_dir"])
    root = tmp / "out"
    tracking = f"sqlite:///{tmp / 'mlflow.db'}"
    renv = runtime_env_for_job(REPO, env={"MLFLOW_TRACKING_URI": tracking, "MLFLOW_ARTIFACT_ROOT": (tmp / "mlartifacts").as_uri(),
                                          "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    renv.pop("working_dir")  # given as --working-dir, exactly as a user types it
    job_id, done = submit(ray_head["address"], renv, ["python", "pipelines/full.py", "--config", "pipelines/configs/ci.yaml",
                                                      f"pipeline.root={root}"])
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-3000:]

    status = ray_cli("job", "status", "--address", ray_head["address"], job_id, timeout=60)
    assert f"Job '{job_id}' succeeded" in status.stdout, status.stdout + status.stderr
    logs = ray_cli("job", "logs", "--address", ray_head["address"], job_id, timeout=60).stdout
    for i, stage in enumerate(STAGES, 1):
        assert f"[pipeline] stage {i}/{len(STAGES)} {stage}: start" in logs, logs[-3000:]
        assert f"[pipeline] stage {i}/{len(STAGES)} {stage}: done in " in logs, logs[-3000:]
    # Imported from the job's uploaded py_modules copy, not from the checkout on this machine.
    package = logs.split("[pipeline] treasure package: ", 1)[1].splitlines()[0]
    assert package.startswith(str(tmp)) and "py_modules_files" in package, package

    # The final summary table: one row per stage with its output, then the headline metrics.
    table = logs.split("\nstage ", 1)[1]
    rows = {line.split()[0]: line.split() for line in table.splitlines()[1:len(STAGES) + 1]}
    assert list(rows) == list(STAGES), table[:2000]
    assert rows["train_marked"][2] == str(root / "runs/ci/checkpoints/marked")
    assert rows["register"][2] == "treasure-marked"
    assert "headline metrics (evaluate):" in table and "length_control" in table
    parent_id = table.split("MLflow parent run ", 1)[1].split()[0]

    # Every stage committed its output under pipeline.root (manifest last = complete).
    manifests = {name: json.loads((root / "runs/ci" / name / "manifest.json").read_text()) for name in OUTPUTS}
    assert manifests["checkpoints/marked"]["markers"] is True and manifests["checkpoints/baseline"]["markers"] is False
    for name in ("checkpoints/baseline", "checkpoints/marked"):
        assert (root / "runs/ci" / name / "config.json").exists() and (root / "runs/ci" / name / "taxonomy.yaml").exists()
    assert (root / "runs/ci/eval/report.md").exists() and (root / "runs/ci/eval/metrics.json").exists()

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking)
    parent = client.get_run(parent_id)
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")
    assert sorted(r.info.run_name.split("-")[0] for r in children) == ["annotate", "evaluate", "normalize", "treasure", "treasure"]
    assert all(r.info.status == "FINISHED" for r in [parent, *children])
    assert client.get_model_version_by_alias("treasure-marked", "candidate").run_id in {r.info.run_id for r in children}
