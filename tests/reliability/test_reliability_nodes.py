"""Reliability scenarios (issue 16): a worker node lost mid-annotate and mid-train on a multi-node local
cluster. Each scenario runs nodes_driver.py in its own process with its own cluster (a head plus the
"victim" worker node the stage is pinned to), removes that node without grace while the stage runs,
and asserts the record: the stage resumed (finished shards / the last checkpoint reused), nothing
lost, no row twice, the fault really injected."""

from __future__ import annotations

import pytest

import scenarios_nodes


@pytest.mark.slow
@pytest.mark.reliability
def test_node_lost_mid_annotate(tmp_path, check_record):
    rec = check_record(scenarios_nodes.annotate_node_lost(tmp_path))
    assert "0 duplicated" in rec["happened"] and "0 shards written twice" in rec["happened"]


@pytest.mark.slow
@pytest.mark.reliability
def test_node_lost_mid_train(tmp_path, check_record):
    rec = check_record(scenarios_nodes.train_node_lost(tmp_path))
    assert "published step" in rec["happened"]
