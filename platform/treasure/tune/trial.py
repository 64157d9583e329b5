"""The trainable: one trial = train a marked model with the sampled config, round by round, then evaluate.

Each round r (treasure.tune.rounds) trains a chunk of the schedule with ``treasure.train.stage.run``
and evaluates the checkpoint with ``treasure.evaluate.stage.run``: cheaply after rounds 1..R-1
(``round_evaluate_overrides``), with the full suite after round R. Every round reports to Tune

    round, round_objective, objective, <final term metrics>, <round term metrics>

with NaN for what is not measured yet (each round runs in its own Ray task outside the trial's
placement group, see ``run_round``), so every report carries every key the scheduler and the
searcher read (Tune checks that). ASHA compares ``round_objective``; the searcher and the best
trial use ``objective`` (final round only).

A trial is one MLflow run nested under the search's parent run; the train and evaluate stage runs
nest under it. A trial that Tune restarts after an interruption reads its Tune checkpoint (the
round reached, the outputs so far, its MLflow run id) and continues at the next round in the same
MLflow run, so a restored search never retrains a finished round.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from treasure.config import flatten
from treasure.tune import objective as obj
from treasure.tune.objective import ObjectiveSpec

STATE_FILE = "trial_state.json"
# Reported in every round that measures them, beside the objective's own metrics (no scheduler or
# searcher reads them): the numbers that explain an objective, side by side in Tune's results and
# in the trials' MLflow runs (held-out loss by band, long-tail and per-category inference accuracy).
CONTEXT_PREFIXES = ("heldout.", "longtail.", "inference.", "train.final_loss")


@dataclass
class TrialSetup:
    """Everything a trial needs, resolved by the driver (paths absolute, configs validated)."""

    base_train: dict
    base_evaluate: dict
    objective: ObjectiveSpec
    rounds: int
    round_evaluate_overrides: dict[str, Any]
    round_evaluate: bool
    heldout_rows: int
    experiment: str
    parent_run_id: str | None
    tracking_uri: str
    artifact_root: str
    trials_root: str
    # Runs one round: (setup, params, r, state) -> (metrics, state); None: the real train → evaluate
    # round (train_and_evaluate_round). Tests pass cheap functions.
    round_fn: Callable | None = None
    env: dict[str, str] = field(default_factory=dict)


def report_keys(spec: ObjectiveSpec) -> list[str]:
    """Metric names every report carries (besides round and the two objectives)."""
    names = [t.metric for t in spec.terms] + [t.metric for t in spec.effective_round_terms()]
    return list(dict.fromkeys(names))


def build_report(metrics: dict, spec: ObjectiveSpec, r: int, rounds: int) -> dict[str, float]:
    """The Tune report of round r from that round's (nested) metrics dict.

    >>> from treasure.tune.objective import ObjectiveTerm
    >>> spec = ObjectiveSpec(terms=[ObjectiveTerm(metric="acc", mode="max")],
    ...                      round_terms=[ObjectiveTerm(metric="loss", mode="min")])
    >>> build_report({"loss": 2.0}, spec, 1, 2)
    {'round': 1, 'round_objective': -2.0, 'objective': nan, 'acc': nan, 'loss': 2.0}
    >>> build_report({"loss": 1.5, "acc": 0.25}, spec, 2, 2)["objective"]
    0.25
    >>> build_report({"loss": 1.5, "acc": 0.25, "heldout": {"head": {"loss": 1.25}}, "other": 1}, spec, 2, 2)["heldout.head.loss"]
    1.25
    """
    flat = flatten(metrics)
    final = r == rounds
    report: dict[str, float] = {"round": r, "round_objective": obj.scalar(flat, spec.effective_round_terms())}
    report["objective"] = obj.scalar(flat, spec.terms) if final else math.nan
    for name in report_keys(spec):
        report[name] = obj.metric_value(flat, name) if (final or name in flat) else math.nan
    for name, value in flat.items():
        if name not in report and name.startswith(CONTEXT_PREFIXES) and isinstance(value, (int, float)) \
                and not isinstance(value, bool):
            report[name] = float(value)
    return report


def trial_dir_name(trial_id: str) -> str:
    return f"trial-{trial_id}"


def _trial_run(setup: TrialSetup, trial_id: str, params: dict, run_id: str | None) -> str:
    """The trial's MLflow run id: the saved one after a restore, else a new run under the search's run.

    Only the client API is used: the train and evaluate stages open their own (fluent) runs in this
    process, nested under this one by id, and MLflow allows one active fluent run per thread.
    """
    from mlflow import MlflowClient
    from mlflow.entities import Param

    from treasure import tracking

    client = MlflowClient(setup.tracking_uri)
    if run_id is not None:
        client.update_run(run_id, status="RUNNING")
        return run_id
    tags = {"tune.trial_id": trial_id, "mlflow.runName": trial_dir_name(trial_id)}
    if setup.parent_run_id:
        tags["mlflow.parentRunId"] = setup.parent_run_id
    run = client.create_run(tracking.experiment_id(setup.experiment), run_name=trial_dir_name(trial_id), tags=tags)
    client.log_batch(run.info.run_id, params=[Param(k, json.dumps(v) if not isinstance(v, str) else v) for k, v in params.items()])
    return run.info.run_id


def _round_task(setup: TrialSetup, params: dict, r: int, state: dict) -> tuple[dict, dict]:
    # No chdir: the driver made every path of the base configs absolute (pipeline.driver_paths).
    os.environ.update({"MLFLOW_TRACKING_URI": setup.tracking_uri, "MLFLOW_ARTIFACT_ROOT": setup.artifact_root, **setup.env})
    return (setup.round_fn or train_and_evaluate_round)(setup, params, r, state)


def run_round(setup: TrialSetup, params: dict, r: int, state: dict) -> tuple[dict, dict]:
    """Run round r in its own Ray task, outside the trial's placement group.

    Tune places a trial in a placement group that captures its child tasks, so the stages' Ray Data
    tasks and actors would have to fit the trial's own small reservation (and wait forever when they
    do not). The round task escapes it (placement_group=None): the train workers, Data tasks and
    evaluation actors then ask the cluster for their own resources, as when a stage runs alone. The
    task holds no CPU itself; when Tune stops the trial, Ray ends the task and what it started.
    """
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    task = ray.remote(num_cpus=0, max_retries=0)(_round_task)
    ref = task.options(scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=None)).remote(setup, params, r, state)
    return ray.get(ref)


def run_trial(params: dict, setup: TrialSetup) -> None:
    """Tune function trainable (bound with ``tune.with_parameters(run_trial, setup=...)``)."""
    import time

    from mlflow import MlflowClient
    from mlflow.entities import Metric
    from ray import tune

    os.environ.update({"MLFLOW_TRACKING_URI": setup.tracking_uri, "MLFLOW_ARTIFACT_ROOT": setup.artifact_root, **setup.env})
    trial_id = tune.get_context().get_trial_id()
    state: dict[str, Any] = {"round": 0, "outputs": {}, "mlflow_run_id": None,
                             "trial_dir": str(Path(setup.trials_root) / trial_dir_name(trial_id))}
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state = json.loads((Path(d) / STATE_FILE).read_text())
    client = MlflowClient(setup.tracking_uri)
    run_id = state["mlflow_run_id"] = _trial_run(setup, trial_id, params, state["mlflow_run_id"])
    if state["round"] == setup.rounds:  # restored after its last report: nothing left to run
        client.set_terminated(run_id, "FINISHED")
    for r in range(state["round"] + 1, setup.rounds + 1):
        metrics, state = run_round(setup, params, r, state)
        report = build_report(metrics, setup.objective, r, setup.rounds)
        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(k, float(v), now, r) for k, v in report.items() if not math.isnan(v)])
        state["round"] = r
        if r == setup.rounds:
            # Tune stops the trial as soon as its last report arrives: close the MLflow run first.
            client.set_tag(run_id, "tune.finished", "true")
            if state["outputs"].get("model"):
                client.set_tag(run_id, "tune.model", state["outputs"]["model"])
            client.set_terminated(run_id, "FINISHED")
        with tempfile.TemporaryDirectory(prefix="treasure-tune-state-") as tmp:
            (Path(tmp) / STATE_FILE).write_text(json.dumps(state))
            tune.report(report, checkpoint=tune.Checkpoint.from_directory(tmp))


def round_train_dict(setup: TrialSetup, params: dict, r: int, state: dict) -> dict:
    """The validated train-config dict of round r for this trial."""
    from treasure.train.config import TrainConfig
    from treasure.tune.config import apply_params
    from treasure.tune.rounds import round_train_config

    full = TrainConfig.model_validate(apply_params(setup.base_train, params)).model_dump(mode="json")
    out = str(Path(state["trial_dir"]) / f"round-{r}" / "model")
    cfg = round_train_config(full, setup.rounds, r, output=out, previous_output=state["outputs"].get("model"))
    # One MLflow registry entry for the search's best trial, not one per round of every trial.
    cfg["registered_model"] = "treasure-tune-trials"
    return TrainConfig.model_validate(cfg).model_dump(mode="json")


def train_and_evaluate_round(setup: TrialSetup, params: dict, r: int, state: dict) -> tuple[dict, dict]:
    """Round r for real: train the chunk and evaluate it (the full suite in the last round) through
    pipeline.run_stages, as the pipeline runs them; then score the held-out loss."""
    from treasure import storage
    from treasure.evaluate.config import EvaluateConfig
    from treasure.pipeline import run_stages
    from treasure.train.config import TrainConfig
    from treasure.tune.config import apply_params
    from treasure.tune.heldout_loss import heldout_loss
    from treasure.tune.longtail import longtail_metrics

    train_cfg = TrainConfig.model_validate(round_train_dict(setup, params, r, state))
    base_eval = EvaluateConfig.model_validate(setup.base_evaluate)
    configs: dict = {"train_marked": train_cfg}
    last = r == setup.rounds
    if last or setup.round_evaluate:
        overrides = {} if last else setup.round_evaluate_overrides
        out = str(Path(state["trial_dir"]) / f"round-{r}" / "eval")
        configs["evaluate"] = EvaluateConfig.model_validate(
            apply_params(setup.base_evaluate, {**overrides, "marked": train_cfg.output, "output": out}))
    summaries = run_stages(configs, list(configs), parent_run_id=state["mlflow_run_id"],
                           log=lambda line: print(f"[trial round {r}] {line}", flush=True))
    state = {**state, "outputs": {**state["outputs"], "model": train_cfg.output}}
    metrics: dict = {"train": summaries["train_marked"]["metrics"]}
    metrics.update(heldout_loss(train_cfg.output, input=base_eval.input, heldout_seed=base_eval.heldout_seed,
                                heldout_fraction=base_eval.heldout_fraction, tail_fraction=base_eval.tail_fraction,
                                categories=base_eval.categories.inference_categories, max_rows=setup.heldout_rows,
                                seed=base_eval.seed, max_length=train_cfg.max_length))
    if "evaluate" in summaries:
        summary = summaries["evaluate"]
        full = json.loads(storage.read_bytes(storage.join(summary["output"], "metrics.json")))
        metrics.update(summary["metrics"])  # the stage's flat headline metrics (dotted names)
        metrics.update(longtail_metrics(full))
        state["outputs"]["eval"] = summary["output"]
    return metrics, state
