"""`ray job submit` to a private `ray start --head` on 127.0.0.1: the package reaches the workers
through the runtime_env of treasure.cluster, and `ray job logs` shows the progress.

CI-sized: the job is tests/infra/infra_ci_workload.py (Ray Data actors, then a 2-worker
TorchTrainer). Once pipelines/full.py exists, the entrypoint becomes
`python pipelines/full.py --config <ci config>`.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid

from conftest import BIN, REPO, ray_env

from treasure.cluster import runtime_env_for_job


def ray_cli(*args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ray"), *args], env=ray_env(), cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def test_job_submit_ships_package_and_logs_progress(ray_head):
    renv = runtime_env_for_job(REPO, env={})
    renv.pop("working_dir")  # given as --working-dir, exactly as a user types it
    deadline = time.time() + 120
    # Transient answers of a head that is still starting (agent not registered yet, or the dashboard
    # dropping the upload connection on a busy machine): Ray's own advice is to submit again.
    transient = ("No available agent to submit job", "Connection aborted", "RemoteDisconnected")
    while True:
        job_id = f"infra-ci-{uuid.uuid4().hex[:8]}"  # a fresh id: an aborted attempt may have registered its id
        submit = ray_cli("job", "submit", "--address", ray_head["address"], "--submission-id", job_id,
                         "--working-dir", ".", "--runtime-env-json", json.dumps(renv), "--",
                         "python", "tests/infra/infra_ci_workload.py", "--rows", "32", "--steps", "2",
                         "--storage", f"{ray_head['temp_dir']}/train", timeout=420)
        if submit.returncode == 0 or not any(t in submit.stderr for t in transient) or time.time() > deadline:
            break
        time.sleep(2)
    assert submit.returncode == 0, submit.stdout[-3000:] + submit.stderr[-3000:]

    status = ray_cli("job", "status", "--address", ray_head["address"], job_id, timeout=60)
    assert f"Job '{job_id}' succeeded" in status.stdout, status.stdout + status.stderr
    logs = ray_cli("job", "logs", "--address", ray_head["address"], job_id, timeout=60).stdout
    assert "progress: annotated 32 rows" in logs
    assert "progress: train step 2/2" in logs
    summary = json.loads(logs.split("summary: ", 1)[1].splitlines()[0])
    assert summary["rows"] == 32 and summary["steps"] == 2
    # Imported from the uploaded py_modules copy, not from the checkout on this machine.
    assert summary["treasure_file"].startswith(ray_head["temp_dir"]), summary["treasure_file"]
    assert "py_modules_files" in summary["treasure_file"]
