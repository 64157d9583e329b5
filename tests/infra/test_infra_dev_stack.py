"""infra/dev_stack.sh for real: a `mlflow server` and a moto S3 server on 127.0.0.1, a pipeline-shaped
MLflow run (parent + nested stage runs through treasure.tracking.run) logged to it and read back
with MlflowClient, then a clean stop. The tests in this module run in order on one stack.
"""

from __future__ import annotations

import os
import subprocess
import urllib.request
from urllib.parse import urlparse

import pytest
from infra_processes import REPO, group_alive

STAGES = ("annotate", "train")


def parse_env(path) -> dict[str, str]:
    return dict(line.removeprefix("export ").split("=", 1) for line in path.read_text().splitlines() if line)


def dev_stack(*args: str) -> subprocess.CompletedProcess:
    # A generous wait: on a loaded 2-core machine `mlflow server` alone has taken minutes to answer.
    env = {**os.environ, "DEV_STACK_WAIT_S": "300"}
    return subprocess.run(["bash", "infra/dev_stack.sh", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=700)


def listening_addresses(port: int) -> set[str]:
    """Local addresses (hex, as in /proc/net/tcp) with a socket listening on `port`."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in open(table).read().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.add(addr)
    return found


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    d = tmp_path_factory.mktemp("dev_stack")
    started = dev_stack("start", str(d))
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        yield d, parse_env(d / "env")
    finally:
        dev_stack("stop", str(d))  # idempotent: the last test stops it already


def test_both_endpoints_answer_on_loopback_only(stack):
    import boto3

    d, env = stack
    for url in (env["MLFLOW_TRACKING_URI"], env["AWS_ENDPOINT_URL"]):
        parsed = urlparse(url)
        assert parsed.hostname == "127.0.0.1"
        assert listening_addresses(parsed.port) == {"0100007F"}  # 127.0.0.1, nothing else
    with urllib.request.urlopen(env["MLFLOW_TRACKING_URI"] + "/health", timeout=10) as r:
        assert r.status == 200
    s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name=env["AWS_DEFAULT_REGION"])
    bucket = env["TREASURE_BUCKET"].removeprefix("s3://")
    s3.put_object(Bucket=bucket, Key="probe.txt", Body=b"ok")
    assert s3.get_object(Bucket=bucket, Key="probe.txt")["Body"].read() == b"ok"


def log_pipeline_run(experiment: str, seed: int) -> str:
    """What pipelines/full.py does: one parent run, one nested run per stage (stages get its id)."""
    import mlflow
    from treasure import tracking

    with tracking.run(experiment, "pipeline", config={"seed": seed, "stages": list(STAGES)}) as parent:
        for i, stage in enumerate(STAGES):
            with tracking.run(experiment, stage, config={"seed": seed, "stage": stage},
                              lineage={"input": f"runs/ci/{i}"}, parent_run_id=parent.info.run_id):
                mlflow.log_metric("rows", 10 * (i + 1) + seed)
        mlflow.log_metric("stages", len(STAGES))
    return parent.info.run_id


def test_pipeline_runs_nest_and_compare_side_by_side(stack, monkeypatch):
    import boto3
    from mlflow.tracking import MlflowClient

    d, env = stack
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("MLFLOW_ARTIFACT_ROOT", raising=False)  # the server's S3 store holds artifacts
    parents = [log_pipeline_run("infra-ci-pipeline", seed) for seed in (0, 1)]

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("infra-ci-pipeline")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    assert len(runs) == 2 * (1 + len(STAGES))  # one experiment holds both pipeline runs
    for seed, parent_id in zip((0, 1), parents):
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent_id]
        assert sorted(r.info.run_name for r in children) == sorted(STAGES)
        assert {r.data.params["seed"] for r in children} == {str(seed)}
        assert sorted(r.data.metrics["rows"] for r in children) == [10 + seed, 20 + seed]
        parent = client.get_run(parent_id)
        assert "mlflow.parentRunId" not in parent.data.tags and parent.data.metrics["stages"] == len(STAGES)
        assert [a.path for a in client.list_artifacts(children[0].info.run_id, "config")] == \
            ["config/lineage.json", "config/resolved.json"]
    # The artifacts went through the server into the S3 stand-in.
    s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"])
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="treasure-dev", Prefix="mlflow/")["Contents"]]
    assert sum(k.endswith("config/resolved.json") for k in keys) == len(runs)


def test_stop_ends_both_servers(stack):
    d, env = stack
    pgids = [int(line.split()[1]) for line in (d / "pids").read_text().splitlines()]
    stopped = dev_stack("stop", str(d))
    assert stopped.returncode == 0, stopped.stderr
    assert not any(group_alive(pgid) for pgid in pgids)
    for url in (env["MLFLOW_TRACKING_URI"], env["AWS_ENDPOINT_URL"]):
        assert not listening_addresses(urlparse(url).port)
    assert dev_stack("status", str(d)).returncode != 0
