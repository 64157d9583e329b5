"""The results of a search: the trial rows and table, the objective plot, MLflow logging and the best trial's registration.

Pure reading of what Tune and MLflow hold after `tune.search.run` fitted the Tuner; nothing here
starts a trial.
"""

from __future__ import annotations

import math
from pathlib import Path

from treasure import tracking
from treasure.tune import objective as obj
from treasure.tune.config import TuneConfig, apply_params
from treasure.tune.trial import CONTEXT_PREFIXES, report_keys


# Shown beside the objective's metrics when the trials report them.
CONTEXT = ("heldout.loss", "longtail.inference.head_accuracy", "inference.block_ok")


def results_table(rows: list[dict], config: TuneConfig) -> str:
    """The trials as a Markdown table, best first: sampled values, status, objective metrics, objective."""
    metrics = report_keys(config.objective)
    metrics += [k for k in CONTEXT if k not in metrics and any(k in r for r in rows)]
    head = ["trial", *config.space, "status", *metrics, "objective", "seconds"]

    def cell(v) -> str:
        return "-" if isinstance(v, float) and math.isnan(v) else f"{v:.4g}" if isinstance(v, float) else str(v)

    def status(r: dict) -> str:
        if r["error"]:
            return "error"
        return f"stopped early (round {int(r['round'])})" if r["stopped_early"] else "finished"

    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in sorted(rows, key=lambda r: -r["objective"] if not math.isnan(r["objective"]) else math.inf):
        lines.append("| " + " | ".join([r["trial_id"], *(cell(r[k]) for k in config.space), status(r),
                                          *(cell(r.get(k, math.nan)) for k in metrics),
                                          cell(r["objective"]), f"{r['seconds']:.0f}"]) + " |")
    return "\n".join(lines)


def trial_rows(result_grid, config: TuneConfig) -> list[dict]:
    """One flat row per trial: trial id, status, sampled params, last reported metrics, stopped early or not."""
    rows = []
    keys = ["round", "round_objective", "objective"] + report_keys(config.objective)
    for res in result_grid:
        m = res.metrics or {}
        row = {"trial_id": m.get("trial_id") or Path(res.path).name, "error": res.error is not None}
        row.update({k: res.config.get(k) for k in config.space})
        row.update({k: float(m[k]) if k in m and m[k] is not None else math.nan for k in keys})
        row.update({k: float(v) for k, v in sorted(m.items())
                    if k.startswith(CONTEXT_PREFIXES) and k not in row and isinstance(v, (int, float))})
        row["stopped_early"] = not row["error"] and row["round"] < config.rounds
        row["seconds"] = float(m.get("time_total_s", math.nan))  # the trial's own time (Tune's clock)
        row["path"] = res.path
        rows.append(row)
    return rows


def _trial_run_id(experiment: str, parent_run_id: str, trial_id: str) -> str | None:
    import mlflow

    runs = mlflow.search_runs(experiment_names=[experiment], output_format="list",
                              filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}' and tags.`tune.trial_id` = '{trial_id}'")
    return runs[0].info.run_id if runs else None


def close_stopped_runs(experiment: str, search_run_id: str) -> int:
    """Mark trial runs that Tune stopped early (their process was ended mid-run) as KILLED; returns how many."""
    import mlflow
    from mlflow import MlflowClient

    runs = mlflow.search_runs(experiment_names=[experiment], output_format="list",
                              filter_string=f"tags.`mlflow.parentRunId` = '{search_run_id}' and attributes.status = 'RUNNING'")
    client = MlflowClient()
    for r in runs:
        client.set_tag(r.info.run_id, "tune.stopped_early", "true")
        client.set_terminated(r.info.run_id, status="KILLED")
    return len(runs)


def register_best(config: TuneConfig, best: dict, parent_run_id: str) -> dict:
    """Log the best trial's checkpoint to its MLflow run and register it as `config.register_model`."""
    import mlflow

    run_id = _trial_run_id(config.experiment, parent_run_id, best["trial_id"])
    if run_id is None:
        raise RuntimeError(f"best trial {best['trial_id']} has no MLflow run under parent {parent_run_id}")
    model = mlflow.get_run(run_id).data.tags.get("tune.model")
    out = {"trial_run_id": run_id, "model": model}
    if not (config.register_model and model):
        return out
    from treasure.models.mlflow_model import log_model

    source = log_model(run_id, model)  # a real MLflow model (pyfunc) holding the checkpoint
    out["model_version"] = tracking.register_version(
        config.register_model, source=source, run_id=run_id, model_tags={"tune.search": config.name},
        tags={"tune.search": config.name, "objective": str(best["objective"])})
    return out


def log_results(config: TuneConfig, results, search_dir: Path, search_run_id: str, train: dict, restored: bool):
    """Rank the trials, log the table, plot and best params to the search's run, register the best;
    returns (best, rows, registered, plot path or None, trials stopped early, finished rows)."""
    import mlflow

    rows = trial_rows(results, config)
    finished = [r for r in rows if not math.isnan(r["objective"])]
    i = obj.best_index(finished, config.objective) if finished else None
    best = finished[i] if i is not None else None
    mlflow.set_tracking_uri(tracking.tracking_uri())
    stopped = close_stopped_runs(config.experiment, search_run_id)
    with mlflow.start_run(run_id=search_run_id):
        plot = search_dir.parent / f"{config.name}.objective.png"
        plotted = str(plot) if _plot(rows, config, plot) else None
        if plotted:
            mlflow.log_artifact(plotted, "plots")
        mlflow.log_dict({"trials": rows}, "trials.json")
        mlflow.log_metrics({"trials": len(rows), "trials_finished": len(finished), "trials_stopped_early": stopped,
                            "restored": float(restored)})
        registered = {}
        if best is not None:
            mlflow.log_metric("best_objective", best["objective"])
            mlflow.log_dict({k: best[k] for k in config.space}, "best/params.json")
            mlflow.log_dict(apply_params(train, {k: best[k] for k in config.space}), "best/train_config.json")
            for k in config.space:
                mlflow.set_tag(f"best.{k}", str(best[k]))
            registered = register_best(config, best, search_run_id)
            mlflow.set_tags({f"best.{k}": str(v) for k, v in registered.items() if v is not None})
    return best, rows, registered, plotted, stopped, finished


def _plot(rows: list[dict], config: TuneConfig, path: Path) -> bool:
    from treasure.tune.plot import numeric_keys, plot_objective

    if not rows or not numeric_keys(rows, list(config.space)):
        return False
    plot_objective(rows, list(config.space), path, title=f"{config.name}: objective vs searched rates")
    return True

