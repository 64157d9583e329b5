"""Cluster access: one way to get a Ray cluster, ship the package to its workers, and check fit.

The same script runs anywhere ("one command, any cluster"):

- ``init_ray()`` connects to ``RAY_ADDRESS`` when it is set (a job submitted with ``ray job
  submit`` gets it from Ray; a laptop can point it at ``ray://...`` or ``host:port``), and
  otherwise starts a private local cluster pinned to 127.0.0.1 (never the machine's external
  address, never another process's cluster found through /tmp/ray).
- ``runtime_env_for_job()`` is the runtime environment that makes ``treasure`` importable on
  every worker without installing it there: the repository as ``working_dir`` (scripts, configs)
  and ``platform/treasure`` as a ``py_modules`` entry. Only non-secret environment settings are
  forwarded; credentials come from the nodes themselves (instance role, Kubernetes secret).
- ``custom_resources()`` validates the ``resources`` field of every ``treasure.resources.Pool``
  (custom Ray resources such as ``annotate_node`` that only some nodes offer).
- ``placement_problem()`` (pure) and ``check_placement()`` (reads the live cluster) fail fast with
  a message that says what to change when a requested set of resource bundles cannot be placed,
  instead of letting Ray wait forever for resources that will never appear; stages call them
  through ``treasure.resources.check_pools``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

REPO = Path(__file__).resolve().parents[2]

# Settings that say *where* things are, never who you are: safe to show in the Ray dashboard.
FORWARDED_ENV = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_ARTIFACT_ROOT",
    "MLFLOW_EXPERIMENT_NAME",
    "AWS_ENDPOINT_URL",
    "AWS_DEFAULT_REGION",
    "TREASURE_RUNS_DIR",
    "HF_HUB_OFFLINE",
    "TOKENIZERS_PARALLELISM",
)
# What the job upload leaves out (Ray also honours .gitignore): environments, outputs, caches.
UPLOAD_EXCLUDES = [".venv/", "runs/", ".git/", "**/__pycache__/", ".pytest_cache/", ".hypothesis/", "*.egg-info/"]


RESERVED_RESOURCES = ("CPU", "GPU", "memory", "object_store_memory")


def custom_resources(resources: Mapping[str, float]) -> dict[str, float]:
    """Validate a stage's placement field: custom Ray resources only, positive amounts.

    Stage configs use it for `resources` fields (e.g. ``{annotate_node: 0.01}``): a node started
    with ``ray start --resources '{"annotate_node": 1}'`` (or a launcher / KubeRay worker group
    with that resource) is then the only place those actors or workers run. CPU and GPU have
    their own fields in every Pool (num_cpus, num_gpus).

    >>> custom_resources({"annotate_node": 0.01})
    {'annotate_node': 0.01}
    >>> custom_resources({"CPU": 1})
    Traceback (most recent call last):
    ...
    ValueError: resources ['CPU'] have their own fields (num_cpus / num_gpus); resources holds custom ones
    """
    reserved = sorted(k for k in resources if k in RESERVED_RESOURCES)
    if reserved:
        raise ValueError(f"resources {reserved} have their own fields (num_cpus / num_gpus); "
                         "resources holds custom ones")
    bad = sorted(k for k, v in resources.items() if not v > 0)
    if bad:
        raise ValueError(f"resources {bad} must be positive amounts")
    return dict(resources)


def unset(value: Any) -> bool:
    """`exclude_if` of placement fields: left empty, they stay out of a config's recorded dump, so
    outputs committed before the field existed still match their config and a rerun reuses them."""
    return not value


class PlacementError(RuntimeError):
    """Requested resources can never be placed on this cluster; the message says what to change."""


def init_ray(address: str | None = None, num_cpus: int | None = None, runtime_env: dict | None = None) -> dict:
    """Connect to ``address`` / ``RAY_ADDRESS``, or start a local cluster on 127.0.0.1.

    Returns ``{"address": ..., "local": bool, "resources": {...}}``. A second call in the same
    process is a no-op (stages assume Ray is already up and never call it themselves).
    """
    import ray

    if ray.is_initialized():
        return _describe(ray, local=None)
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        if num_cpus is not None:
            raise ValueError("num_cpus sizes a new local cluster; an existing cluster at "
                             f"{address} has its own size (unset RAY_ADDRESS to start a local one)")
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
        return _describe(ray, local=False)
    # Ray 2.60 enables token auth by default; a private local cluster has nobody to keep out,
    # and `ray job submit` / the dashboard must agree on the mode (see docs/architecture.md).
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # Without this Ray turns 127.0.0.1 into the machine's external address (resolve_ip_for_localhost);
    # it only means "this node stays on loopback", which is what a private cluster wants.
    # The flag is read when ray is imported, so the already-imported constant is set as well.
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] not in {"0", "false", "False"}
    env = dict(runtime_env or {})
    env_vars = {"RAY_AUTH_MODE": os.environ["RAY_AUTH_MODE"], **env.get("env_vars", {})}
    env["env_vars"] = env_vars
    # address="local" never attaches to a cluster some other process started on this machine.
    ray.init(address="local", num_cpus=num_cpus, _node_ip_address="127.0.0.1", include_dashboard=True,
             dashboard_host="127.0.0.1", runtime_env=env)
    return _describe(ray, local=True)


def _describe(ray, local: bool | None) -> dict:
    ctx = ray.get_runtime_context()
    return {"address": ctx.gcs_address, "local": local, "resources": ray.cluster_resources()}


def runtime_env_for_job(repo: str | Path = REPO, env: Mapping[str, str] | None = None,
                        extra_env_vars: Mapping[str, str] | None = None) -> dict:
    """The runtime_env that ships the repository and the ``treasure`` package to every worker.

    >>> renv = runtime_env_for_job("/src/treasure-hunt", env={"MLFLOW_TRACKING_URI": "http://mlflow:5000",
    ...                                                       "AWS_SECRET_ACCESS_KEY": "x"})
    >>> renv["py_modules"], renv["env_vars"]
    (['/src/treasure-hunt/platform/treasure'], {'MLFLOW_TRACKING_URI': 'http://mlflow:5000'})
    """
    repo = Path(repo)
    env = os.environ if env is None else env
    env_vars = {k: env[k] for k in FORWARDED_ENV if env.get(k)}
    env_vars.update(extra_env_vars or {})
    return {
        "working_dir": str(repo),
        "py_modules": [str(repo / "platform" / "treasure")],
        "excludes": list(UPLOAD_EXCLUDES),
        "env_vars": env_vars,
    }


def placement_problem(bundles: Sequence[Mapping[str, float]], nodes: Sequence[Mapping[str, float]],
                      what: str, hint: str) -> str | None:
    """Why ``bundles`` cannot all be placed on ``nodes`` (total resources per node), or None.

    Bundles are packed first-fit, largest first, as a placement group with the PACK/SPREAD
    strategies may place them; a bundle never spans nodes.

    >>> placement_problem([{"CPU": 2}] * 2, [{"CPU": 2}], "training workers", "lower train.pool.count")
    'training workers need 2 bundles of {CPU: 2} (CPU: 4 in total) but the cluster has CPU: 2 on 1 node(s) [CPU: 2]; lower train.pool.count'
    >>> placement_problem([{"CPU": 1}] * 2, [{"CPU": 1}, {"CPU": 1}], "w", "h") is None
    True
    """
    free = [dict(n) for n in nodes]
    order = sorted(range(len(bundles)), key=lambda i: -sum(bundles[i].values()))
    for i in order:
        need = {k: v for k, v in bundles[i].items() if v > 0}
        node = next((n for n in free if all(n.get(k, 0.0) + 1e-9 >= v for k, v in need.items())), None)
        if node is None:
            return _explain(bundles, nodes, what, hint)
        for k, v in need.items():
            node[k] -= v
    return None


def _fmt(res: Mapping[str, float]) -> str:
    return ", ".join(f"{k}: {v:g}" for k, v in sorted(res.items()))


def _explain(bundles, nodes, what: str, hint: str) -> str:
    total: dict[str, float] = {}
    for b in bundles:
        for k, v in b.items():
            total[k] = total.get(k, 0.0) + v
    have = {k: sum(n.get(k, 0.0) for n in nodes) for k in total}
    shapes = sorted({_fmt(b) for b in bundles})
    per_node = "; ".join(f"[{_fmt({k: n.get(k, 0.0) for k in total})}]" for n in nodes)
    return (f"{what} need {len(bundles)} bundles of {{{' | '.join(shapes)}}} ({_fmt(total)} in total) "
            f"but the cluster has {_fmt(have)} on {len(nodes)} node(s) {per_node}; {hint}")


def cluster_nodes() -> list[dict[str, float]]:
    """Total resources of each alive node of the connected cluster (Ray's own node-marker keys dropped)."""
    import ray

    return [{k: v for k, v in n["Resources"].items() if not k.startswith("node:")}
            for n in ray.nodes() if n["Alive"]]


def autoscaling() -> bool:
    """True when the cluster can grow (a launcher or KubeRay cluster sets TREASURE_AUTOSCALING=1)."""
    return os.environ.get("TREASURE_AUTOSCALING", "0").lower() in {"1", "true", "yes"}


def check_placement(bundles: Sequence[Mapping[str, float]], what: str, hint: str) -> None:
    """Raise ``PlacementError`` now if ``bundles`` can never fit the connected cluster.

    On an autoscaling cluster (GPU workers min 0) missing resources are expected to appear, so
    the check is skipped there; see ``autoscaling()``.
    """
    if autoscaling():
        return
    problem = placement_problem(bundles, cluster_nodes(), what, hint)
    if problem:
        raise PlacementError(problem)


def node_summary() -> list[dict[str, Any]]:
    """One line per alive node (id, ip, resources): what a job prints so its logs show the cluster."""
    import ray

    return [{"node_id": n["NodeID"][:12], "ip": n["NodeManagerAddress"],
             "resources": {k: v for k, v in n["Resources"].items() if not k.startswith("node:")}}
            for n in ray.nodes() if n["Alive"]]
