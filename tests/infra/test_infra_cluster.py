"""treasure.cluster without Ray: the job runtime_env and the placement check (pure functions)."""

from __future__ import annotations

from pathlib import Path

import pytest

from treasure.cluster import FORWARDED_ENV, placement_problem, runtime_env_for_job


def test_runtime_env_ships_repo_and_package_but_no_secrets(tmp_path):
    env = {"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000", "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
           "AWS_SECRET_ACCESS_KEY": "s3cr3t", "AWS_ACCESS_KEY_ID": "id", "RAY_AUTH_TOKEN": "tok"}
    renv = runtime_env_for_job(tmp_path, env=env)
    assert renv["working_dir"] == str(tmp_path)
    assert renv["py_modules"] == [str(tmp_path / "platform" / "treasure")]
    assert renv["env_vars"] == {"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000", "AWS_ENDPOINT_URL": "http://127.0.0.1:9000"}
    assert ".venv/" in renv["excludes"] and "runs/" in renv["excludes"]
    secrets = {"AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN", "RAY_AUTH_TOKEN",
               "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "HF_TOKEN"}
    assert not secrets & set(FORWARDED_ENV)


def test_runtime_env_of_this_repo_points_at_the_package(repo):
    renv = runtime_env_for_job()
    assert Path(renv["py_modules"][0]) == repo / "platform" / "treasure"
    assert (Path(renv["py_modules"][0]) / "__init__.py").exists()
    assert not (repo / "platform" / "__init__.py").exists()


@pytest.mark.parametrize("bundles, nodes, fits", [
    ([{"CPU": 1}] * 2, [{"CPU": 2}], True),
    ([{"CPU": 1}] * 3, [{"CPU": 2}], False),
    ([{"CPU": 2}] * 2, [{"CPU": 3}, {"CPU": 1}], False),  # 4 CPUs in total, but no bundle spans nodes
    ([{"CPU": 2}, {"CPU": 1}], [{"CPU": 1}, {"CPU": 2}], True),
    ([{"CPU": 1, "GPU": 1}] * 2, [{"CPU": 8}], False),
    ([{"CPU": 1, "train_node": 1}] * 2, [{"CPU": 4}, {"CPU": 2, "train_node": 2}], True),
    ([{"CPU": 0.5}] * 4, [{"CPU": 2}], True),
])
def test_placement_problem(bundles, nodes, fits):
    assert (placement_problem(bundles, nodes, "workers", "hint") is None) is fits


def test_placement_message_says_what_to_change():
    msg = placement_problem([{"CPU": 1, "GPU": 1}] * 4, [{"CPU": 16, "GPU": 2}], "training workers",
                            "lower train.pool.count or add GPU nodes")
    assert msg == ("training workers need 4 bundles of {CPU: 1, GPU: 1} (CPU: 4, GPU: 4 in total) but the "
                   "cluster has CPU: 16, GPU: 2 on 1 node(s) [CPU: 16, GPU: 2]; lower train.pool.count or add GPU nodes")
