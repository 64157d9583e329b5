"""Reliability scenarios (issue 16): a node lost mid-annotate and mid-train on a multi-node local cluster.

Each scenario writes its input and stage config into a work folder, runs nodes_driver.py in its own
process (its own multi-node cluster: the session's `ray_local` is one shared node), reads the
driver's "facts: {json}" line, checks the output itself (annotate: every input id exactly once;
train: every step logged, none before the resume point trained twice, the resume not from step 0)
and returns a scenarios.record. `failed` names each expectation that did not hold, the fault not
being injected included.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import scenarios
from scenarios import REPO, annotate_fixtures, record

train_fixtures = scenarios.load_module("reliability_train_fixtures", REPO / "tests" / "train" / "conftest.py")
DRIVER = Path(__file__).with_name("nodes_driver.py")
VICTIM = {"victim": 0.01}  # placement resource only the driver's worker node offers
DRIVER_TIMEOUT_S = 900  # the driver bounds each wait itself (nodes_driver.WAIT_*); this catches the rest


def run_driver(stage: str, workdir: Path) -> tuple[dict | None, str]:
    """(facts or None, output tail) of `nodes_driver.py stage workdir`, run in its own process group
    with its own RAY_TMPDIR and MLflow store, so its cluster ends with it whatever happens."""
    # Ray's socket paths live under RAY_TMPDIR and must stay under 108 bytes: a short folder, not workdir.
    ray_tmp = tempfile.mkdtemp(prefix="rn")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "RAY_raylet_start_wait_time_s": "120", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
           "RAY_TMPDIR": ray_tmp, "PYTHONPATH": str(REPO / "platform"),
           "MLFLOW_TRACKING_URI": tracking_uri(workdir), "MLFLOW_ARTIFACT_ROOT": (workdir / "mlartifacts").as_uri()}
    env.pop("RAY_ADDRESS", None)  # never the session's cluster
    proc = subprocess.Popen([sys.executable, str(DRIVER), stage, str(workdir)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    timed_out = False
    try:
        out, _ = proc.communicate(timeout=DRIVER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        timed_out = True
        end_group(proc)
        out = proc.communicate()[0]
    finally:
        end_group(proc)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    (workdir / "driver.log").write_text(out)
    facts = [line for line in out.splitlines() if line.startswith("facts: ")]
    if timed_out:
        out += f"\n[driver killed after {DRIVER_TIMEOUT_S} s]"
    return (json.loads(facts[-1][len("facts: "):]) if facts else None), out[-3000:]


def end_group(proc: subprocess.Popen) -> None:
    """SIGKILL what is left of the driver's process group (raylets or workers of a crashed driver)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def no_facts(name: str, expected: str, tail: str, lost: int, t0: float) -> dict:
    """The record of a driver that printed no facts (crashed, or killed at DRIVER_TIMEOUT_S: hung)."""
    hung = tail.endswith(f"[driver killed after {DRIVER_TIMEOUT_S} s]")
    return record(name, "unknown: the driver printed no facts", expected, f"driver output: {tail[-600:]}", lost, hung,
                  t0, ["the driver crashed" if not hung else "the driver did not end"])


def not_injected(facts: dict) -> list[str]:
    """The expectations about the fault itself: the node was killed while the stage ran, with work on it."""
    if not facts["killed"]:
        return ["the node was not killed while work was running"]
    if not facts.get("workers_killed"):
        return ["no worker process ran on the killed node"]
    return []


def tracking_uri(workdir: Path) -> str:
    return f"sqlite:///{workdir / 'mlflow.db'}"


# --- annotate: the node running the pipeline is lost ----------------------------------------------

def annotate_config(workdir: Path) -> tuple[list[str], object]:
    """(input ids, AnnotateConfig) of a 93-row normalized corpus in 33 shards, every read + rule task,
    tagger actor and merge actor pinned to the victim node."""
    from treasure.annotate.config import AnnotateConfig

    rows = annotate_fixtures.make_rows(90)  # + 3 deliberately bad rows
    annotate_fixtures.write_normalized(str(workdir / "normalized"), rows, rows_per_file=31)
    cfg = AnnotateConfig.model_validate(annotate_fixtures.base_config(
        str(workdir / "normalized"), str(workdir / "annotated"), shard_rows=3, experiment="nodes",
        rules={"pool": {"count": None, "num_cpus": 0.5, "resources": VICTIM}}, quality={"engine": "zipf", "batch_size": 3, "pool": {"num_cpus": 0.5, "resources": VICTIM}},
        # The LLM tagger (one row per shard) is what makes shards arrive one by one over tens of seconds:
        # without it the whole corpus is one Finisher batch and every shard lands in the same instant.
        tagger={"enabled": True, "categories": ["format"], "max_rows": 31, "max_prompt_chars": 200,
                "batch_size": 1, "pool": {"count": 1, "num_cpus": 0.5, "resources": VICTIM}}))
    (workdir / "config.json").write_text(cfg.model_dump_json())
    return [r["id"] for r in rows], cfg


def annotate_node_lost(workdir: Path) -> dict:
    """Inject: SIGKILL the worker node (raylet + workers) that runs every annotate task and actor, after
    two shards are written; a fresh node joins. Must hold: the run recovers or a rerun resumes, reusing
    exactly the shards finished before (none redone), and every input row ends exactly once in the
    data or errors table."""
    from treasure import storage

    t0 = time.monotonic()
    ids, cfg = annotate_config(workdir)
    facts, tail = run_driver("annotate", workdir)
    name = "nodes: worker node lost mid-annotate"
    expected = ("the stage recovers or a rerun resumes, skipping every shard finished before; "
                "every row exactly once in data or errors")
    if facts is None:
        return no_facts(name, expected, tail, len(ids), t0)
    failed = []
    at_kill = (facts.get("at_kill") or {}).get("done_shards")
    injected = (f"victim node SIGKILLed (raylet + {facts.get('workers_killed')} Ray worker processes) after {at_kill} of "
                f"{len(plan_of(cfg))} shards were written; a fresh node joined" if facts["killed"]
                else "the node was not removed (not injected)")
    failed += not_injected(facts)
    if facts["killed"] and at_kill >= len(plan_of(cfg)):
        failed.append("every shard was finished before the kill: nothing was left to resume")
    hung = facts["first_hung"] or bool(facts.get("rerun_hung"))
    final = facts.get("rerun_result") or facts.get("first_result")
    if hung or final is None or storage.read_manifest(cfg.output) is None:
        what = "hung" if hung else f"no committed output: first {facts['first_error']}; rerun {facts.get('rerun_error')}"
        return record(name, injected, expected, what[:400], len(ids), hung, t0, failed + ["the stage did not finish"])
    m = final["metrics"]
    if facts["first_error"] is None:
        first = f"first run recovered by itself (ran {m['shards_run']}/{m['shards']} shards)"
    else:
        finished = facts["after_first"]["done_shards"]
        first = (f"first run failed ({facts['first_error'][:160]}) with {finished} shards finished; rerun skipped "
                 f"{m['shards_skipped']}, ran {m['shards_run']}/{m['shards']}")
        if m["shards_skipped"] < finished:
            failed.append(f"rerun redid finished shards: skipped {m['shards_skipped']}, {finished} were finished")
        elif m["shards_skipped"] > finished:
            failed.append(f"the rerun skipped {m['shards_skipped']} shards, only {finished} were finished")
    rewritten = shards_written_twice(workdir)
    if rewritten:  # a shard re-sent after the node loss and written again: finished work redone
        failed.append(f"finished shards written twice: {rewritten[:5]}")
    lost, dup, text = scenarios.exactly_once(ids, cfg.output)
    return record(name, injected, expected, f"{first}; {len(rewritten)} shards written twice; {text}", lost + dup,
                  False, t0, failed)


def shards_written_twice(workdir: Path) -> list[str]:
    """Shards the stage wrote more than once over the first run and the rerun, from its own progress lines
    ("annotate: shard <name> done (...)", one per write_shard)."""
    seen: dict[str, int] = {}
    for line in (workdir / "driver.log").read_text().splitlines():
        if line.startswith("annotate: shard ") and " done (" in line:
            shard = line.split()[2]
            seen[shard] = seen.get(shard, 0) + 1
    return sorted(s for s, n in seen.items() if n > 1)


def plan_of(cfg) -> list[dict]:
    from treasure import storage
    from treasure.annotate.shards import plan_shards

    return plan_shards(cfg.input, storage.read_manifest(cfg.input), cfg.shard_rows, 0)


# --- train: the node of the training worker is lost -----------------------------------------------

def train_config(workdir: Path):
    """A tiny-model TrainConfig (as tests/train's) whose one worker needs the victim node."""
    from treasure.taxonomy import load_taxonomy
    from treasure.train.config import TrainConfig

    train_fixtures.write_annotated(str(workdir / "annotated"), train_fixtures.make_rows(96), load_taxonomy("paper").version)
    cfg = TrainConfig.model_validate(dict(
        input=str(workdir / "annotated"), output=str(workdir / "ckpt"), experiment="nodes-train",
        max_length=96, batch_size=4, max_steps=60, warmup_steps=2, checkpoint_every=4, max_failures=2,
        learning_rate=3e-3, pool={"count": 1, "num_cpus": 1, "resources": {"victim": 1}}, log_every=1,
        model={"kind": "tiny", "vocab_size": 400, "hidden_size": 32, "num_layers": 1, "num_heads": 2,
               "intermediate_size": 64, "tokenizer_cache": str(workdir / "tok")}))
    (workdir / "config.json").write_text(cfg.model_dump_json())
    return cfg


def step_history(workdir: Path, run_id: str) -> tuple[list[int], dict[int, list[float]], str | None]:
    """(resumed_from_step values in order, step → the losses logged for it, the rank-0 shard tag)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri(workdir))
    resumed = [int(m.value) for m in sorted(client.get_metric_history(run_id, "resumed_from_step"), key=lambda m: m.timestamp)]
    losses: dict[int, list[float]] = {}
    for m in sorted(client.get_metric_history(run_id, "loss"), key=lambda m: m.timestamp):
        losses.setdefault(m.step, []).append(m.value)
    return resumed, losses, client.get_run(run_id).data.tags.get("shard.rank0")


def train_node_lost(workdir: Path) -> dict:
    """Inject: SIGKILL the worker node running the (only) training worker once a checkpoint is registered;
    a fresh node joins. Must hold: training resumes from that checkpoint (not step 0) on the new node,
    within the run's FailureConfig or by a rerun; every step up to max_steps is trained and logged, no
    step up to the resume point twice, the steps replayed after it with the same loss (the same batches);
    the worker read every row once; the published checkpoint is the last step."""
    from treasure import storage

    t0 = time.monotonic()
    cfg = train_config(workdir)
    facts, tail = run_driver("train", workdir)
    name = "nodes: worker node lost mid-train"
    expected = ("training resumes from the last registered checkpoint (not step 0); every step to max_steps trained, "
                "once up to the resume point, replayed steps on the same batches; the worker read every row once; "
                "the last step published")
    if facts is None:
        return no_facts(name, expected, tail, cfg.max_steps, t0)
    failed = []
    at_kill = (facts.get("at_kill") or {}).get("registered_step")
    injected = (f"victim node SIGKILLed (raylet + {facts.get('workers_killed')} Ray worker processes, the training worker's) "
                f"with checkpoint step {at_kill} registered; a fresh node joined" if facts["killed"]
                else "the node was not removed (not injected)")
    failed += not_injected(facts)
    if facts["killed"] and at_kill >= cfg.max_steps:
        failed.append("training had finished before the kill: nothing was left to resume")
    hung = facts["first_hung"] or bool(facts.get("rerun_hung"))
    final = facts.get("rerun_result") or facts.get("first_result")
    manifest = storage.read_manifest(cfg.output)
    if hung or final is None or manifest is None:
        what = "hung" if hung else f"no committed output: first {facts['first_error']}; rerun {facts.get('rerun_error')}"
        return record(name, injected, expected, what[:400], cfg.max_steps, hung, t0, failed + ["training did not finish"])
    resumed, counts, shard = step_history(workdir, final["mlflow_run_id"])
    if facts.get("rerun_result") and facts["first_result"] is None:  # a rerun is a new MLflow run: both count
        first_run = _first_run_id(workdir, cfg.experiment, final["mlflow_run_id"])
        if first_run:
            r0, c0, _ = step_history(workdir, first_run)
            resumed = r0 + resumed
            for s, values in c0.items():
                counts[s] = values + counts.get(s, [])
    restarts = resumed[1:]  # every value after the first attempt's 0
    if not restarts:
        failed.append("training was never restarted after the node loss")
    elif min(restarts) == 0:
        failed.append(f"training restarted from step 0 (resumed_from_step {resumed})")
    elif at_kill is not None and min(restarts) < at_kill:
        failed.append(f"resumed from step {min(restarts)}, an older checkpoint than step {at_kill} registered at the kill")
    missing = [s for s in range(1, cfg.max_steps + 1) if s not in counts]
    first_resume = min(restarts) if restarts else 0
    twice = [s for s, values in counts.items() if s <= first_resume and len(values) > 1]
    if twice:
        failed.append(f"steps up to the resume point trained twice: {sorted(twice)[:10]}")
    replayed = sorted(s for s, values in counts.items() if len(values) > 1 and s > first_resume)
    # The loop replays the same batches after a resume (seeded order, batch_in_epoch in the checkpoint):
    # a replayed step with another loss trained on other rows, i.e. rows skipped or seen twice.
    differ = [s for s in replayed if max(counts[s]) - min(counts[s]) > 1e-4]
    if differ:
        failed.append(f"replayed steps trained on other batches (losses differ): {differ[:10]}")
    rows = final["metrics"]["rows"]
    shard_rows = int(shard.split(":")[0]) if shard else -1
    if manifest.get("step") != cfg.max_steps or final["metrics"]["steps"] != cfg.max_steps:
        failed.append(f"published step {manifest.get('step')}, final steps {final['metrics']['steps']}, not {cfg.max_steps}")
    how = "within the run (FailureConfig)" if facts["first_error"] is None else \
        f"by a rerun after the first run failed ({facts['first_error'][:160]})"
    happened = (f"resumed {how}; resumed_from_step {resumed}; {cfg.max_steps - len(missing)}/{cfg.max_steps} steps logged, "
                f"{len(replayed)} replayed after the checkpoint ({f'{replayed[0]}-{replayed[-1]}' if replayed else 'none'}, "
                f"{len(replayed) - len(differ)} with the same loss), "
                f"{len(twice)} up to it twice; worker read {shard_rows} of {rows} rows; published step {manifest.get('step')}")
    return record(name, injected, expected, happened, len(missing) + abs(shard_rows - rows), False, t0, failed)


def _first_run_id(workdir: Path, experiment: str, other: str) -> str | None:
    """The MLflow run of the failed first attempt (the experiment's other run), if there is one."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri(workdir))  # not mlflow.set_tracking_uri: the session's store stays
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id]) if exp else []
    ids = [r.info.run_id for r in sorted(runs, key=lambda r: r.info.start_time) if r.info.run_id != other]
    return ids[0] if ids else None
