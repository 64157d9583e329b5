"""The one resources model of every Ray pool: how many, and what each one reserves.

Every stage spells its Ray workers the same way, `Pool(count, num_cpus, num_gpus, resources)`:
annotate's read + rule tasks (`annotate.rules.pool`), its tagger and quality actors
(`annotate.tagger.pool`, `annotate.quality.pool`), evaluation's engine actors
(`evaluate.generation.pool`) and the training workers (`train.pool`). `check_pools` is the one
placement check: the pools that run at once must fit the cluster, in total and node by node, or
the stage fails now with the numbers instead of waiting forever for resources that never come.

>>> Pool(count=2, num_cpus=0.5, resources={"annotate_node": 0.01}).bundles()
[{'CPU': 0.5, 'annotate_node': 0.01}, {'CPU': 0.5, 'annotate_node': 0.01}]
>>> Pool(num_cpus=4, num_gpus=1).ray_options()
{'num_cpus': 4.0, 'num_gpus': 1.0, 'resources': None}
>>> placement_problem_of({"tagger": Pool(count=2, num_cpus=1)}, [{"CPU": 1}])
'tagger need 2 bundles of {CPU: 1} (CPU: 2 in total) but the cluster has CPU: 1 on 1 node(s) [CPU: 1]; lower the count / num_cpus of tagger'
"""

from __future__ import annotations

from typing import Mapping, Sequence

from pydantic import Field, field_validator

from treasure.cluster import PlacementError, autoscaling, cluster_nodes, custom_resources, placement_problem, unset
from treasure.config import StrictModel


class Pool(StrictModel):
    """Ray workers of one kind (actors, train workers or tasks): how many, and what each reserves."""

    count: int | None = Field(1, ge=1, le=4096, description="How many run at once: actors, training workers, or at "
                              "most this many tasks (null, for tasks only: as many as the free CPUs allow).")
    num_cpus: float = Field(1.0, ge=0.0, le=256.0, description="CPUs each one reserves (fractions are fine; training "
                            "workers use int(num_cpus) torch threads).")
    num_gpus: float = Field(0.0, ge=0.0, le=8.0, description="GPUs each one reserves (fractions share a GPU).")
    resources: dict[str, float] = Field(
        default_factory=dict, exclude_if=unset,
        description="Custom Ray resources each one reserves, e.g. {annotate_node: 0.01}: it then only runs on nodes "
        "started with that resource (a cluster pins a stage to some nodes this way). Empty: any node.")

    @field_validator("resources")
    @classmethod
    def _custom_only(cls, resources: dict[str, float]) -> dict[str, float]:
        return custom_resources(resources)

    def bundle(self) -> dict[str, float]:
        """What one of them reserves, as a placement bundle."""
        return {"CPU": self.num_cpus, **({"GPU": self.num_gpus} if self.num_gpus else {}), **self.resources}

    def bundles(self) -> list[dict[str, float]]:
        """Every bundle that runs at once (one for a task pool of unbounded count)."""
        return [self.bundle() for _ in range(self.count or 1)]

    def ray_options(self) -> dict:
        """Ray Data `map_batches` / `ray.remote` options of one of them."""
        return {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus, "resources": self.resources or None}


def placement_problem_of(pools: Mapping[str, Pool], nodes: Sequence[Mapping[str, float]], hint: str = "") -> str | None:
    """Why the pools, all at once, cannot be placed on `nodes` (None when they can)."""
    bundles = [b for pool in pools.values() for b in pool.bundles()]
    what = " + ".join(pools)
    return placement_problem(bundles, nodes, what, hint or f"lower the count / num_cpus of {what}")


def check_pools(pools: Mapping[str, Pool], hint: str = "") -> None:
    """Raise PlacementError now when the pools that run at once can never fit the connected cluster
    (skipped on an autoscaling cluster, where missing nodes are expected to appear)."""
    if autoscaling():
        return
    problem = placement_problem_of(pools, cluster_nodes(), hint)
    if problem:
        raise PlacementError(problem)
