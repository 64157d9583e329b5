"""Three Ray nodes on one machine (ray.cluster_utils.Cluster), then the CI pipeline placed across them.

    .venv/bin/python tests/infra/infra_multinode.py --root /tmp/mn [extra key=value overrides]

The head has 1 CPU and no custom resources; node "annotate" offers `annotate_node` (1 CPU), node
"train" offers `train_node: 4` (4 logical CPUs; each training's 2 workers use 2 of them). The pipeline (pipelines/configs/ci.yaml, run in this process
with treasure.pipeline.run_pipeline against the cluster's address) pins annotation tasks and
actors and the evaluation engine actor to `annotate_node` and its 2 training workers to
`train_node`, through the stage configs' placement fields. First the fail-fast placement check
must refuse 5 such workers (the train node has room for 4).

Prints "nodes: {json}", "placement_check: ...", the pipeline's progress lines, then
"actors: {json}" (class name → node ids of every actor the cluster ran, from the Ray state API),
"rule_tasks: [node ids]" (where the read + rule annotator tasks ran) and "summary: {json}". Runs in its own process (the test starts it) with its own RAY_TMPDIR, so no
other Ray user on the machine can find or join this cluster.
"""

from __future__ import annotations

import argparse
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

REPO = Path(__file__).resolve().parents[2]
PLACEMENT = [
    "annotate.rules.pool.resources={annotate_node: 0.01}",
    "annotate.quality.pool.resources={annotate_node: 0.01}",
    "evaluate.generation.pool.resources={annotate_node: 0.01}",
    "train.pool.count=2",
    "train.pool.num_cpus=1",
    "train.pool.resources={train_node: 1}",
]


def actor_nodes() -> dict[str, list[str]]:
    """Class name → sorted node ids of every actor the cluster has run (alive or dead), from the state API."""
    from ray.util.state import list_actors

    found: dict[str, list[str]] = {}
    for a in list_actors(limit=10_000, raise_on_missing_output=False):
        if a.node_id:  # an actor Ray Data asked for but never needed is never placed: it ran nowhere
            found.setdefault(a.class_name, []).append(a.node_id)
    return {k: sorted(v) for k, v in found.items()}


def task_nodes(contains: str) -> list[str]:
    """Node ids of every task attempt whose name contains `contains`, from the state API."""
    from ray.util.state import list_tasks

    return sorted({t.node_id for t in list_tasks(limit=10_000, raise_on_missing_output=False)
                   if contains in (t.name or "") and t.node_id})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="pipeline.root: where every output of the run goes")
    parser.add_argument("overrides", nargs="*", help="extra key=value overrides of pipelines/configs/ci.yaml")
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{Path(args.root).resolve() / 'mlflow.db'}")

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": None})
    try:
        annotate = cluster.add_node(num_cpus=1, resources={"annotate_node": 1})
        train = cluster.add_node(num_cpus=4, resources={"train_node": 4})
        cluster.wait_for_nodes()
        os.environ["RAY_ADDRESS"] = cluster.address
        nodes = {"head": cluster.head_node.node_id, "annotate": annotate.node_id, "train": train.node_id}
        print("nodes: " + json.dumps(nodes), flush=True)

        from treasure.cluster import PlacementError, check_placement, init_ray
        from treasure.config import load_config
        from treasure.pipeline import PipelineConfig, run_pipeline, summary_table

        os.chdir(REPO)  # normalize.input (the bundled sources) is relative to the repository
        config = load_config(PipelineConfig, REPO / "pipelines/configs/ci.yaml",
                             [f"pipeline.root={args.root}", "pipeline.run_name=multinode", *PLACEMENT, *args.overrides])
        init_ray()
        try:
            check_placement([config.train.resources_per_worker] * 5, "training workers", "lower train.pool.count")
            print("placement_check: accepted", flush=True)
        except PlacementError as e:
            print(f"placement_check: refused: {e}", flush=True)
        summaries = run_pipeline(config, log=lambda line: print(line, flush=True))
        print("\n" + summary_table(summaries), flush=True)
        print("actors: " + json.dumps(actor_nodes()), flush=True)
        print("rule_tasks: " + json.dumps(task_nodes("read_shard_batch")), flush=True)
        print("summary: " + json.dumps({k: {"output": v.get("output"), "manifest_id": v.get("manifest_id"),
                                            "mlflow_run_id": v.get("mlflow_run_id")} for k, v in summaries.items()}),
              flush=True)
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main()
    sys.exit(0)
