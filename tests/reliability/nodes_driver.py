"""A separate driver process for the node-loss scenarios (issue 16): its own multi-node Ray cluster
on this machine, a stage pinned to a "victim" worker node, the node removed mid-stage.

    python tests/reliability/nodes_driver.py annotate|train <workdir>

<workdir>/config.json holds the stage config (AnnotateConfig / TrainConfig JSON) that
scenarios_nodes.py wrote, with its input already committed. The config pins the stage's work to the
custom resource `victim`, which only the worker node offers (the head has none), so the work
provably runs there. Once it does (annotate: shards are being written; train: a checkpoint is
registered), the node is removed without grace (its raylet and workers SIGKILLed, as a lost
machine) and a fresh node with the same resources joins, so the stage has somewhere to resume.
The stage either recovers inside its run or fails; after a failure the driver reruns it once
(resume: finished shards / the last checkpoint must be reused).

Prints progress lines and, last, one line "facts: {json}" for the scenario to judge. The cluster
lives in its own RAY_TMPDIR and is shut down in `finally`, so it never meets the test session's
`ray_local` and leaves no Ray process behind.
"""

from __future__ import annotations

import glob
import json
import os
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

# Before ray is imported: a private temp dir (nobody else finds this cluster) and loopback nodes.
if "RAY_TMPDIR" not in os.environ:  # scenarios_nodes.py passes one (and removes it afterwards)
    os.environ["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="rnodes")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

VICTIM = "victim"  # the custom resource only the worker node offers
WAIT_WORK_S = 300  # for work to show up on the victim node
WAIT_END_S = 300  # for the stage to end after the node is gone (beyond: hung)
ANNOTATE_CPUS = 2  # the read + rule task, the tagger and the merge actor (0.5 CPU each) fit on the node


def log(line: str) -> None:
    print(f"[nodes_driver] {line}", flush=True)


def start_cluster(victim_cpus: int) -> tuple[Cluster, object]:
    """A head with 1 CPU and no `victim` resource, plus one worker node that offers it."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    node = add_victim(cluster, victim_cpus)
    os.environ["RAY_ADDRESS"] = cluster.address
    ray.init(address=cluster.address, log_to_driver=False)
    return cluster, node


def add_victim(cluster: Cluster, cpus: int):
    node = cluster.add_node(num_cpus=cpus, resources={VICTIM: 1})
    cluster.wait_for_nodes()
    return node


def victim_in_use() -> bool:
    """True while a task, actor or training worker holds part of `victim`: work placed on the victim node
    (the only node that has the resource), read from the cluster's own accounting."""
    total = ray.cluster_resources().get(VICTIM, 0)
    return total > 0 and ray.available_resources().get(VICTIM, 0) < total - 1e-9


def kill_node(cluster: Cluster, node) -> int:
    """Remove the node as a lost machine: its raylet and every process under it SIGKILLed at once.
    Returns how many Ray worker processes were killed with it.

    remove_node alone SIGKILLs the node's own daemons; its worker processes only exit once they notice
    the raylet is gone, and a training worker went on for several steps meanwhile. A lost machine takes
    its workers with it, so they are killed here too (all of them processes of this driver's cluster).
    """
    import psutil
    from ray._private import ray_constants

    raylet = psutil.Process(node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid)
    under = raylet.children(recursive=True)  # workers, and the node's agents
    workers = 0
    for p in [raylet, *under]:  # SIGKILL in one sweep, raylet first: the node dies, not a worker
        try:
            workers += p is not raylet and is_worker(p)
            p.kill()
        except psutil.NoSuchProcess:
            pass
    cluster.remove_node(node, allow_graceful=False)  # the node's other daemons, and the cluster's bookkeeping
    return workers


def is_worker(p) -> bool:
    """A Ray worker process (idle ones are "default_worker.py", busy ones retitled "ray::<task or actor>")."""
    cmd = " ".join(p.cmdline())
    return cmd.startswith("ray::") or "default_worker.py" in cmd


def wait_for(predicate, timeout: float, alive=None, every: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if alive is not None and not alive():
            return bool(predicate())
        time.sleep(every)
    return False


def in_thread(fn, *args) -> tuple[threading.Thread, dict]:
    """Run fn(*args) in a daemon thread; the box gets "result" or "error" (a short text)."""
    box: dict = {}

    def target():
        try:
            box["result"] = fn(*args)
        except BaseException as e:  # reported as a fact
            box["error"] = f"{type(e).__name__}: {e}"[:600]
            box["traceback"] = traceback.format_exc()[-3000:]

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, box


def fault_then_finish(cluster: Cluster, node, cpus: int, fn, cfg, ready, progress) -> dict:
    """Run fn(cfg); when ready() and the victim node holds work, remove it and add a fresh one; wait for
    the run; rerun once if it failed. Returns the facts both stages share (plus progress() at the kill)."""
    facts: dict = {"killed": False}
    thread, first = in_thread(fn, cfg)
    reached = wait_for(lambda: ready() and victim_in_use(), WAIT_WORK_S, alive=thread.is_alive)
    facts["running_at_kill"] = thread.is_alive()
    if reached and thread.is_alive():
        facts["at_kill"] = progress()
        facts["workers_killed"] = kill_node(cluster, node)
        facts["killed"] = True
        log(f"victim node removed at {facts['at_kill']}")
        add_victim(cluster, cpus)
        log("fresh victim node joined")
    thread.join(WAIT_END_S)
    facts["first_hung"] = thread.is_alive()
    facts["first_error"] = first.get("error")
    if first.get("traceback"):
        log("first run failed:\n" + first["traceback"])
    facts["first_result"] = first.get("result")
    if facts["first_hung"]:
        return facts
    facts["after_first"] = progress()
    if facts["first_error"] is not None:  # resume by rerunning, as an operator would
        thread, second = in_thread(fn, cfg)
        thread.join(WAIT_END_S)
        facts["rerun_hung"] = thread.is_alive()
        facts["rerun_error"] = second.get("error")
        facts["rerun_result"] = second.get("result")
    return facts


# --- annotate ------------------------------------------------------------------------------------

def annotate(workdir: Path) -> dict:
    from treasure import storage
    from treasure.annotate.config import AnnotateConfig
    from treasure.annotate.stage import run

    cfg = AnnotateConfig.model_validate_json((workdir / "config.json").read_text())

    def markers() -> int:
        return sum(f.endswith("/done.json") for f in storage.list_files(storage.join(cfg.output, "_staging")))

    cluster, node = start_cluster(ANNOTATE_CPUS)
    try:
        # Two shards written: the pipeline is streaming, its tasks and actors on the victim node.
        facts = fault_then_finish(cluster, node, ANNOTATE_CPUS, run, cfg, lambda: markers() >= 2,
                                  lambda: {"done_shards": markers()})
    finally:
        ray.shutdown()
        cluster.shutdown()
    for key in ("first_result", "rerun_result"):
        if facts.get(key):
            facts[key] = {k: facts[key].get(k) for k in ("manifest_id", "metrics")}
    return facts


# --- train ---------------------------------------------------------------------------------------

def registered_step(output: str) -> int:
    """The highest checkpoint step the Ray Train controller has registered (0: none yet). A folder that
    exists but is not in the snapshot is rightly not resumed from, so only the snapshot counts."""
    steps = [0]
    for f in glob.glob(os.path.join(output, "_ray", "*", "checkpoint_manager_snapshot.json")):
        try:
            text = Path(f).read_text()
        except OSError:
            continue
        steps += [int(part.split('"')[0].split("/")[0]) for part in text.split("checkpoint_step_")[1:]
                  if part.split('"')[0].split("/")[0].isdigit()]
    return max(steps)


def train(workdir: Path) -> dict:
    from treasure.train.config import TrainConfig
    from treasure.train.stage import run

    cfg = TrainConfig.model_validate_json((workdir / "config.json").read_text())
    cpus = cfg.pool.count * cfg.pool.num_cpus  # exactly the worker group: it can only run on this node
    cluster, node = start_cluster(cpus)
    try:
        # A registered checkpoint before the last step: training is under way on the victim node and
        # there is something to resume from.
        facts = fault_then_finish(cluster, node, cpus, run, cfg, lambda: registered_step(cfg.output) > 0,
                                  lambda: {"registered_step": registered_step(cfg.output)})
    finally:
        ray.shutdown()
        cluster.shutdown()
    return facts


if __name__ == "__main__":
    stage, workdir = sys.argv[1], Path(sys.argv[2])
    t0 = time.monotonic()
    facts = {"annotate": annotate, "train": train}[stage](workdir)
    facts["driver_seconds"] = round(time.monotonic() - t0, 1)
    print("facts: " + json.dumps(facts, default=str), flush=True)
    # A hung first run's thread may still hold Ray handles: leave without waiting for it.
    os._exit(0)
