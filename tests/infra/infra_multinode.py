"""Three Ray nodes on one machine (ray.cluster_utils.Cluster), then the CI workload across them.

    .venv/bin/python tests/infra/infra_multinode.py [--rows 32] [--steps 2]

The head has 1 CPU and no custom resources; node "annotate" offers `annotate_node`, node "train"
offers `train_node` (2 CPUs), so annotation actors and training workers must land on different
nodes. First it checks that the fail-fast placement check refuses 3 training workers on a node
with room for 2, then runs infra_ci_workload. Prints "nodes: {json}", "placement_check: ..." and
the workload's "summary: {json}". Runs in its own process (the test starts it) with its own
RAY_TMPDIR, so no other Ray user on the machine can find or join this cluster.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

# Set before ray is imported: the cluster's address file and sessions go here, and nodes stay on
# 127.0.0.1 (see treasure.cluster.init_ray).
os.environ.setdefault("RAY_TMPDIR", tempfile.mkdtemp(prefix="rmn"))
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import infra_ci_workload  # noqa: E402


def main() -> None:
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": None})
    try:
        annotate = cluster.add_node(num_cpus=1, resources={"annotate_node": 1})
        train = cluster.add_node(num_cpus=2, resources={"train_node": 2})
        cluster.wait_for_nodes()
        os.environ["RAY_ADDRESS"] = cluster.address
        nodes = {"head": cluster.head_node.node_id, "annotate": annotate.node_id, "train": train.node_id}
        print("nodes: " + json.dumps(nodes), flush=True)

        from treasure.cluster import PlacementError, check_placement, init_ray

        init_ray()
        try:
            check_placement([{"CPU": 1, "train_node": 1}] * 3, "training workers", "lower --train-workers")
            print("placement_check: accepted", flush=True)
        except PlacementError as e:
            print(f"placement_check: refused: {e}", flush=True)
        infra_ci_workload.main(sys.argv[1:] + ["--annotate-resource", "annotate_node",
                                               "--train-resource", "train_node"])
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main()
