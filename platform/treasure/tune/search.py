"""The search: Tuner setup, restore, the MLflow parent run (results, plot and registration: tune/results.py).

``run(config)`` assumes Ray is initialised. It
1. resolves the base train/evaluate configs and checks every search key against TrainConfig
   (a typo fails before any trial starts), and checks the trials fit the cluster (fail fast);
2. opens (or, on restore, reopens) the parent MLflow run; each trial nests its own run under it;
3. runs ``tune.Tuner`` (ASHA on ``round_objective``, the searcher on ``objective`` or on every
   term when ``objective.combine: pareto``), or ``Tuner.restore`` when an interrupted search of
   the same name exists at ``storage_path`` (finished trials are not rerun);
4. ranks finished trials (treasure.tune.objective.best_index), logs the table and the plot, and
   registers the best trial's checkpoint as ``register_model`` in the MLflow registry.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

from treasure import tracking
from treasure.config import ConfigError, load_config
from treasure.tune.config import Choice, Grid, LogUniform, RandInt, TuneConfig, Uniform, apply_params, example_value
from treasure.tune.results import log_results
from treasure.tune.trial import TrialSetup, run_trial

SEARCH_FILE = "treasure_search.json"  # parent MLflow run id + config of a search, for restore


class SearchInterrupted(RuntimeError):
    """The search stopped before every trial finished (Ctrl-C, SIGTERM); run it again to resume."""


def tune_space(space: dict) -> dict[str, Any]:
    """Our domain specs → Ray Tune sample domains (keys unchanged)."""
    from ray import tune

    out: dict[str, Any] = {}
    for key, d in space.items():
        if isinstance(d, Grid):
            out[key] = tune.grid_search(list(d.values))
        elif isinstance(d, Choice):
            out[key] = tune.choice(list(d.values))
        elif isinstance(d, Uniform):
            out[key] = tune.quniform(d.low, d.high, d.q) if d.q else tune.uniform(d.low, d.high)
        elif isinstance(d, LogUniform):
            out[key] = tune.loguniform(d.low, d.high)
        elif isinstance(d, RandInt):
            out[key] = tune.randint(d.low, d.high)
        else:  # a new domain type must be mapped here
            raise TypeError(f"unmapped domain {d!r}")
    return out


def base_configs(config: TuneConfig, *, evaluate: bool = True) -> tuple[dict, dict]:
    """(train dict, evaluate dict) from pipeline_config plus the search's overrides; keys checked.

    ``evaluate=False`` (a custom round function that does not evaluate) skips the evaluate section.
    """
    from treasure.train.config import TrainConfig

    from treasure.pipeline import driver_paths

    train = load_config(TrainConfig, config.pipeline_config, config.train_overrides, section=config.train_section)
    # Trials run in their own folders: every path is made absolute here, in the driver.
    train_dict = driver_paths(train).model_dump(mode="json")
    for key, domain in config.space.items():
        try:
            TrainConfig.model_validate(apply_params(train_dict, {key: example_value(domain)}))
        except (ValueError, ConfigError) as e:
            raise ConfigError(f"search key {key!r} does not set a valid TrainConfig field: {e}") from None
    if not train.markers:
        raise ConfigError("the search tunes a marked model: the base train config has markers: false")
    return train_dict, (_evaluate_dict(config) if evaluate else {})


def _evaluate_dict(config: TuneConfig) -> dict:
    from treasure.evaluate.config import EvaluateConfig

    # model/output are set per trial; validate the rest now so a bad section fails before any trial.
    from treasure.pipeline import driver_paths

    cfg = load_config(EvaluateConfig, config.pipeline_config, config.evaluate_overrides, section=config.evaluate_section)
    return driver_paths(cfg).model_dump(mode="json")


def trial_bundles(config: TuneConfig, train: dict) -> list[dict[str, float]]:
    """Resource bundles of all concurrent trials: the trial process plus its train workers each, plus the reserve.

    >>> from treasure.tune.objective import ObjectiveSpec, ObjectiveTerm
    >>> cfg = TuneConfig(space={"dropout.dataset_rate": {"type": "grid", "values": [0.5]}},
    ...                  objective=ObjectiveSpec(terms=[ObjectiveTerm(metric="m", mode="max")]),
    ...                  resources={"trial_cpus": 0, "max_concurrent_trials": 1, "reserve_cpus": 0})
    >>> trial_bundles(cfg, {"pool": {"count": 1, "num_cpus": 2}})
    [{'CPU': 2.0}]
    """
    res = config.resources
    per_trial: list[dict[str, float]] = []
    if res.trial_cpus or res.trial_gpus:
        per_trial.append({k: v for k, v in {"CPU": res.trial_cpus, "GPU": res.trial_gpus}.items() if v})
    from treasure.resources import Pool

    per_trial += Pool.model_validate(train["pool"]).bundles()
    bundles = per_trial * res.max_concurrent_trials
    if res.reserve_cpus:
        bundles.append({"CPU": res.reserve_cpus})
    return bundles


def check_resources(config: TuneConfig, train: dict) -> None:
    from treasure.cluster import check_placement

    check_placement(trial_bundles(config, train), f"{config.resources.max_concurrent_trials} concurrent trial(s)",
                    "lower tune.resources.max_concurrent_trials / trial_cpus / reserve_cpus or the train "
                    "section's pool (count / num_cpus) (a trial that cannot be placed waits forever)")


def searcher(config: TuneConfig):
    """The search algorithm (None: Tune's basic random/grid generator)."""
    if config.searcher.type == "basic":
        return None
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    if config.objective.combine == "pareto":
        terms = config.objective.terms
        return OptunaSearch(metric=[t.metric for t in terms], mode=[t.mode for t in terms],
                            sampler=optuna.samplers.NSGAIISampler(seed=config.seed))
    return OptunaSearch(metric="objective", mode="max", sampler=optuna.samplers.TPESampler(seed=config.seed))


def scheduler(config: TuneConfig):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if config.scheduler.type == "fifo":
        return FIFOScheduler()
    return ASHAScheduler(time_attr="round", metric="round_objective", mode="max", max_t=config.rounds,
                         grace_period=config.scheduler.grace_period, reduction_factor=config.scheduler.reduction_factor)


def _trainable(config: TuneConfig, setup: TrialSetup):
    from ray import tune

    res = config.resources
    resources = {"cpu": res.trial_cpus, "gpu": res.trial_gpus, "memory": res.trial_memory_mb * 1024 * 1024}
    return tune.with_resources(tune.with_parameters(run_trial, setup=setup), resources)


# Credentials Ray Tune would copy from the driver into every trial actor's runtime env.
CREDENTIAL_ENV = frozenset({"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN", "AWS_SESSION_TOKEN"})


def keep_credentials_out_of_trial_runtime_envs() -> None:
    """Ray Tune copies the driver's AWS credentials into each trial actor's runtime env
    (ray.tune.execution.class_cache.ENV_VARS_TO_PROPAGATE), where the dashboard's actor view and
    runtime_env_agent.log show them to anyone who reaches the dashboard. Trials get credentials as
    every other Ray worker does: from their own process environment (the node's) or the cloud's
    credential chain (instance profile, web identity)."""
    from ray.tune.execution import class_cache

    # Read at each trainable's registration, so rebinding the module constant takes effect.
    class_cache.ENV_VARS_TO_PROPAGATE = frozenset(class_cache.ENV_VARS_TO_PROPAGATE) - CREDENTIAL_ENV


def _tuner(config: TuneConfig, setup: TrialSetup, search_dir: Path):
    from ray import tune

    keep_credentials_out_of_trial_runtime_envs()
    trainable = _trainable(config, setup)
    if config.resume == "auto" and tune.Tuner.can_restore(str(search_dir)):
        # Finished trials keep their results; unfinished and errored ones continue from their last round.
        return tune.Tuner.restore(str(search_dir), trainable=trainable, resume_unfinished=True, resume_errored=True), True
    if search_dir.exists() and config.resume == "never" and any(search_dir.iterdir()):
        raise FileExistsError(f"{search_dir} holds a search already; pick another tune.name or set tune.resume=auto")
    import ray.tune.search as search_mod

    alg = searcher(config)
    if alg is not None:
        alg = search_mod.ConcurrencyLimiter(alg, max_concurrent=config.resources.max_concurrent_trials)
    tuner = tune.Tuner(
        trainable,
        param_space=tune_space(config.space),
        tune_config=tune.TuneConfig(search_alg=alg, scheduler=scheduler(config), num_samples=config.num_samples,
                                    max_concurrent_trials=config.resources.max_concurrent_trials,
                                    # Trials run one after another in the same process: imports and the
                                    # MLflow store connection are paid once, not per trial.
                                    reuse_actors=True),
        run_config=tune.RunConfig(name=config.name, storage_path=str(search_dir.parent), verbose=1,
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=2)),
    )
    return tuner, False


def expected_trials(config: TuneConfig) -> int:
    """How many trials the search runs: num_samples, times the grid size for grid axes.

    >>> from treasure.tune.objective import ObjectiveSpec, ObjectiveTerm
    >>> expected_trials(TuneConfig(num_samples=2, objective=ObjectiveSpec(terms=[ObjectiveTerm(metric="m", mode="max")]),
    ...     space={"a": {"type": "grid", "values": [1, 2, 3]}, "b": {"type": "grid", "values": [1, 2]}, "c": {"type": "uniform", "low": 0, "high": 1}}))
    12
    """
    n = config.num_samples
    for d in config.space.values():
        if isinstance(d, Grid):
            n *= len(d.values)
    return n


def ended_trials(search_dir: Path) -> int:
    """Trials the search's saved Tune state holds as ended (TERMINATED or ERROR).

    Read from the saved state, not from the ResultGrid: on an interrupt Tune saves the state first
    and then stops the running trials, which the ResultGrid then counts as TERMINATED, so an
    interrupt during the last trial would pass for a finished search.
    """
    from ray.tune import ExperimentAnalysis

    return sum(t.status in ("TERMINATED", "ERROR") for t in ExperimentAnalysis(str(search_dir)).trials)


def _open_parent(config: TuneConfig, search_dir: Path, restored: bool, parent_run_id: str | None) -> str:
    """The parent MLflow run id: the saved one when restoring, else a new run logging the search config."""
    saved = search_dir.parent / f"{config.name}.{SEARCH_FILE}"
    if restored and saved.exists():
        return json.loads(saved.read_text())["search_run_id"]
    with tracking.run(config.experiment, config.name, config=config, parent_run_id=parent_run_id,
                      tags={"tune.search": config.name}) as active:
        run_id = active.info.run_id
    saved.parent.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps({"search_run_id": run_id, "config": config.model_dump(mode="json")}, indent=2))
    return run_id


def run(config: TuneConfig, *, parent_run_id: str | None = None, round_fn: Callable | None = None,
        env: dict[str, str] | None = None) -> dict:
    """Run (or resume) the search; returns {"output", "mlflow_run_id", "best", "trials", "plot", "metrics"}.

    `parent_run_id` nests the search's run under a pipeline run. `round_fn` replaces the real
    train → evaluate round (a function; tests use cheap ones), `env` is set
    in every trial process.
    """

    search_dir = Path(config.storage_path).resolve() / config.name
    train, evaluate = base_configs(config, evaluate=round_fn is None)
    check_resources(config, train)
    from ray import tune

    restoring = config.resume == "auto" and tune.Tuner.can_restore(str(search_dir))
    search_run_id = _open_parent(config, search_dir, restoring, parent_run_id)
    setup = TrialSetup(
        base_train=train, base_evaluate=evaluate, objective=config.objective, rounds=config.rounds,
        round_evaluate_overrides=dict(config.round_evaluate_overrides), round_evaluate=config.round_evaluate,
        heldout_rows=config.heldout_rows, experiment=config.experiment,
        parent_run_id=search_run_id, tracking_uri=tracking.tracking_uri(), artifact_root=tracking.artifact_root(),
        trials_root=str(search_dir.parent / f"{config.name}.trials"), env=dict(env or {}), round_fn=round_fn,
    )
    tuner, restored = _tuner(config, setup, search_dir)
    results = tuner.fit()
    ended, expected = ended_trials(search_dir), expected_trials(config)
    if ended < expected:
        # Tune saved its state on the interrupt; nothing is ranked or registered from a partial search.
        raise SearchInterrupted(f"search {config.name} interrupted with {ended} of {expected} trials ended; "
                                f"run the same command again to resume from {search_dir}")
    best, rows, registered, plotted, stopped, finished = log_results(config, results, search_dir, search_run_id, train, restored)
    return {"output": str(search_dir), "mlflow_run_id": search_run_id, "restored": restored, "best": best,
            "registered": registered, "trials": rows, "plot": plotted,
            "metrics": {"trials": len(rows), "trials_finished": len(finished), "trials_stopped_early": stopped,
                        "best_objective": best["objective"] if best else math.nan}}


