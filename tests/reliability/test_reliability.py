"""Reliability scenarios of the data path (issue 9): bad corpus data, annotate tagger / driver kills,
the S3 endpoint disappearing mid-write. Each test runs a scenario and asserts its record (lost == 0,
not hung). Training and tuning faults live in tests/train and tests/tune; run.py includes them."""

from __future__ import annotations


import pytest

import scenarios
from scenarios import annotate_fixtures


def annotate_input(uri: str, n: int, rows_per_file: int = 1000) -> list[str]:
    rows = annotate_fixtures.make_rows(n)
    annotate_fixtures.write_normalized(uri, rows, rows_per_file=rows_per_file)
    return [r["id"] for r in rows]


@pytest.mark.reliability
def test_bad_data_every_record_accounted(tmp_path, annotate_mlflow, check_record, ray_local):
    rec = check_record(scenarios.bad_data_corpus(tmp_path))
    assert "0 errors without reason" in rec["happened"]


@pytest.mark.reliability
def test_annotate_torn_markers_then_rerun(tmp_path, ray_local, annotate_mlflow, check_record):
    from treasure.annotate.config import AnnotateConfig

    ids = annotate_input(str(tmp_path / "normalized"), 24, rows_per_file=8)
    cfg = AnnotateConfig.model_validate(annotate_fixtures.base_config(
        str(tmp_path / "normalized"), str(tmp_path / "annotated"), shard_rows=4, quality={"enabled": False}))
    check_record(scenarios.annotate_torn_markers(cfg, ids))


@pytest.mark.slow
@pytest.mark.reliability
def test_annotate_tagger_actor_killed(tmp_path, ray_local, annotate_mlflow, check_record):
    from treasure.annotate.config import AnnotateConfig

    ids = annotate_input(str(tmp_path / "normalized"), 24)
    cfg = AnnotateConfig.model_validate(annotate_fixtures.base_config(
        str(tmp_path / "normalized"), str(tmp_path / "annotated"), shard_rows=3, quality={"enabled": False},
        tagger={"enabled": True, "categories": ["format"], "max_rows": 27, "max_prompt_chars": 200,
                "batch_size": 1, "pool": {"count": 1, "num_cpus": 0.5}}))
    check_record(scenarios.annotate_tagger_killed(ray_local, cfg, ids))


@pytest.mark.slow
@pytest.mark.reliability
def test_annotate_driver_killed_then_rerun(tmp_path, ray_local, annotate_mlflow, check_record):
    from treasure.annotate.config import AnnotateConfig

    # 150 shards: on a quiet machine 16 shards all finished within one 0.2 s poll, so the kill came
    # after the end; this many leaves work to resume whatever the machine's speed.
    ids = annotate_input(str(tmp_path / "normalized"), 600, rows_per_file=100)
    cfg = AnnotateConfig.model_validate(annotate_fixtures.base_config(
        str(tmp_path / "normalized"), str(tmp_path / "annotated"), shard_rows=4))
    check_record(scenarios.annotate_driver_killed(ray_local, cfg, ids, {}))


@pytest.mark.slow
@pytest.mark.reliability
def test_s3_endpoint_gone_mid_write(tmp_path, ray_local, annotate_mlflow, check_record, s3_endpoint, s3_bucket):
    """The session's S3 endpoint (whose address the workers have in their environment) is stopped
    mid-write and brought back on the same port; moto's buckets live in this process and survive."""
    from treasure.annotate.config import AnnotateConfig

    try:
        ids = annotate_input(f"{s3_bucket}/normalized", 40, rows_per_file=10)
        cfg = AnnotateConfig.model_validate(annotate_fixtures.base_config(
            f"{s3_bucket}/normalized", f"{s3_bucket}/annotated", shard_rows=4, quality={"enabled": False}))
        check_record(scenarios.s3_endpoint_gone(cfg, ids, s3_endpoint.stop, s3_endpoint.start))
    finally:
        if s3_endpoint.server is None:
            s3_endpoint.start()  # the rest of the session still needs it


@pytest.mark.slow
@pytest.mark.reliability
def test_mlflow_server_down_mid_stage(tmp_path, ray_local, check_record, monkeypatch):
    """A real `mlflow server` for this scenario alone; MLflow's client retries kept short (the defaults
    retry for minutes, which is right for a blip but would make this scenario slow)."""
    from treasure.annotate.config import AnnotateConfig

    server = scenarios.MlflowServer(tmp_path, scenarios.serving_fixtures.free_port())
    server.start()
    try:
        for key, value in {"MLFLOW_TRACKING_URI": server.url, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
                           "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}.items():
            monkeypatch.setenv(key, value)
        monkeypatch.delenv("MLFLOW_ARTIFACT_ROOT", raising=False)  # the server proxies artifacts
        ids = annotate_input(str(tmp_path / "normalized"), 40, rows_per_file=8)
        cfg = AnnotateConfig.model_validate(annotate_fixtures.base_config(
            str(tmp_path / "normalized"), str(tmp_path / "annotated"), shard_rows=4, quality={"enabled": False},
            experiment="mlflow-down"))
        check_record(scenarios.mlflow_server_down(cfg, ids, server))
    finally:
        server.stop()


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs mounted for this test (needs root, or CAP_SYS_ADMIN, as on the project's machines)."""
    import subprocess

    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.fail(f"the disk-full scenario mounts a small tmpfs and could not: {mounted.stderr.strip()} "
                    "(run it as root, or in a container with CAP_SYS_ADMIN)")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.mark.slow
@pytest.mark.reliability
def test_disk_full_while_writing_shards(tmp_path, small_disk, ray_local, annotate_mlflow, check_record):
    from treasure.annotate.config import AnnotateConfig

    ids = annotate_input(str(tmp_path / "normalized"), 40, rows_per_file=8)
    cfg = AnnotateConfig.model_validate(annotate_fixtures.base_config(
        str(tmp_path / "normalized"), str(small_disk / "annotated"), shard_rows=4, quality={"enabled": False}))
    check_record(scenarios.annotate_disk_full(cfg, ids, small_disk, leave=48 * 1024))
