"""The search end to end at toy size on real Ray and a real MLflow store (cheap round function).

The round function is the only stand-in (treasure.tune.trial.train_and_evaluate_round trains and
evaluates for real; see test_tune_trial_real.py): Tune, ASHA, the trial trainable, checkpoints,
MLflow parent/nested runs, model registration and the plot are all the real ones.
"""

import math

import pytest
from ray import cloudpickle

import tune_toy_rounds
from treasure.cluster import PlacementError
from treasure.config import ConfigError, load_config
from treasure.tune import command, search
from treasure.tune.config import TuneConfig

cloudpickle.register_pickle_by_value(tune_toy_rounds)  # Ray workers cannot import the tests folder


def toy_config(repo, tmp_path, name, grid, rounds, scheduler, extra=()):
    overrides = tune_toy_rounds.toy_overrides(tmp_path, name, grid, rounds=rounds, scheduler=scheduler)
    return load_config(TuneConfig, repo / "tuning" / "configs" / "demo.yaml", [*overrides, *extra], section="tune")


@pytest.mark.timeout(240)
def test_toy_search_asha_mlflow_registry_plot(repo, tmp_path, ray_local, tune_mlflow):
    import mlflow
    from secret_places import AWS_SECRET_CANARY, AWS_SESSION_CANARY, dashboard_views, leaks, ray_logs

    # Trials run one at a time in grid order; ASHA (factor 2) stops a trial at a rung when its
    # round_objective is under the median of the trials recorded there before it. Round objective
    # = -((x - .5)^2 + 1/round): at round 1, 0.0 → -1.25, 0.4 → -1.01, 0.5 → -1.00, then 0.1 → -1.16
    # is under the median -1.01 of the three before it: stopped. The others pass both rungs; the
    # trial after the stopped one (0.45) shows the stopped trial's process did not run on.
    config = toy_config(repo, tmp_path, "toy-asha", [0.0, 0.4, 0.5, 0.1, 0.45], rounds=3, scheduler="asha")
    out = search.run(config, round_fn=tune_toy_rounds.toy_round)
    # Ray Tune would copy the driver's AWS credentials (the session's canaries) into every trial
    # actor's runtime env, shown by the dashboard and runtime_env_agent.log: search.py stops it.
    places = [dashboard_views(ray_local), ray_logs(ray_local)]
    assert leaks(AWS_SECRET_CANARY, *places) == [] and leaks(AWS_SESSION_CANARY, *places) == []

    rows = {r["dropout.dataset_rate"]: r for r in out["trials"]}
    assert sorted(rows) == [0.0, 0.1, 0.4, 0.45, 0.5] and out["metrics"]["trials"] == 5
    assert rows[0.1]["round"] == 1 and math.isnan(rows[0.1]["objective"])  # stopped at the first rung
    stopped_dir = tmp_path / "tune" / "toy-asha.trials" / f"trial-{rows[0.1]['trial_id']}"
    assert tune_toy_rounds.marker_counts(stopped_dir.parent)[stopped_dir.name] == ["round-1.done"]
    for rate in (0.0, 0.4, 0.45, 0.5):  # objective = 1 - (x - .5)^2 - .1 * .5, computed by hand
        assert rows[rate]["round"] == 3 and rows[rate]["objective"] == pytest.approx(1 - (rate - 0.5) ** 2 - 0.05)
    assert out["best"]["dropout.dataset_rate"] == 0.5
    assert out["metrics"]["trials_finished"] == 4 and out["metrics"]["trials_stopped_early"] == 1
    assert rows[0.1]["stopped_early"] and not any(rows[r]["stopped_early"] for r in (0.0, 0.4, 0.45, 0.5))
    table = command.results_table(out["trials"], config).splitlines()
    assert len(table) == 2 + 5 and "| 0.5 | 0.5 | finished | 0.95 | 0.3333 | 0.95 |" in table[2]  # best first
    assert "stopped early (round 1)" in table[-1]

    # MLflow: one parent run, one nested run per trial with its params and per-round metrics.
    client = mlflow.MlflowClient()
    parent = client.get_run(out["mlflow_run_id"])
    assert parent.data.metrics["best_objective"] == pytest.approx(0.95)
    assert parent.data.tags["best.dropout.dataset_rate"] == "0.5"
    children = mlflow.search_runs(experiment_names=["treasure-tune"], output_format="list",
                                  filter_string=f"tags.`mlflow.parentRunId` = '{out['mlflow_run_id']}'")
    assert len(children) == 5
    by_rate = {float(c.data.params["dropout.dataset_rate"]): c for c in children}
    assert by_rate[0.1].info.status == "KILLED" and by_rate[0.1].data.tags["tune.stopped_early"] == "true"
    assert by_rate[0.5].info.status == "FINISHED"
    history = client.get_metric_history(by_rate[0.5].info.run_id, "round_objective")
    assert [m.step for m in history] == [1, 2, 3]
    # The best trial's checkpoint is registered, pointing back at the trial's run.
    versions = client.search_model_versions("name = 'toy-asha-best'")
    assert [v.run_id for v in versions] == [by_rate[0.5].info.run_id]
    assert out["registered"]["model_version"] == versions[0].version

    png = out["plot"]
    assert png.endswith(".png") and open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert [a.path for a in client.list_artifacts(out["mlflow_run_id"], "plots")] == ["plots/toy-asha.objective.png"]


def test_bad_search_key_fails_before_any_trial(repo, tmp_path):
    config = toy_config(repo, tmp_path, "toy-bad", [0.5], rounds=2, scheduler="fifo",
                        extra=["space={dropout.dataset_rat: {type: choice, values: [0.5]}}"])
    with pytest.raises(ConfigError, match="dropout.dataset_rat"):
        search.base_configs(config, evaluate=False)


def test_trials_that_cannot_be_placed_fail_fast(repo, tmp_path, ray_local):
    config = toy_config(repo, tmp_path, "toy-big", [0.5], rounds=2, scheduler="fifo",
                        extra=["resources={trial_cpus: 1, max_concurrent_trials: 2}"])
    train, _ = search.base_configs(config, evaluate=False)
    with pytest.raises(PlacementError, match="2 concurrent trial"):
        search.check_resources(config, train)
