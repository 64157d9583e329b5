"""TuneConfig validation, the round plan, the per-round report, and the shipped tuning YAMLs."""

import math

import pytest

from treasure.config import ConfigError, load_config
from treasure.tune.config import TuneConfig, apply_params
from treasure.tune.objective import ObjectiveSpec, ObjectiveTerm
from treasure.tune.rounds import round_bounds, round_plan, round_train_config
from treasure.tune.trial import build_report

OBJ = {"terms": [{"metric": "acc", "mode": "max"}], "round_terms": [{"metric": "loss", "mode": "min"}]}


def cfg(**kw):
    data = {"space": {"dropout.dataset_rate": {"type": "grid", "values": [0.0, 0.5]}}, "objective": OBJ, **kw}
    return TuneConfig.model_validate(data)


def test_config_rules():
    assert cfg().scheduler.type == "asha"
    with pytest.raises(ValueError, match="needs searcher.type=optuna"):
        cfg(objective={**OBJ, "combine": "pareto"})
    with pytest.raises(ValueError, match="cannot take grid axes"):
        cfg(searcher={"type": "optuna"})
    with pytest.raises(ValueError, match="grace_period"):
        cfg(rounds=1)
    with pytest.raises(ValueError, match="low < high"):
        cfg(space={"dropout.sample_rate": {"type": "uniform", "low": 0.9, "high": 0.1}})
    with pytest.raises(ValueError, match="extra"):
        cfg(spcae={})


def test_apply_params_sets_dotted_train_fields():
    base = {"dropout": {"dataset_rate": 0.5, "sample_rate": 0.5, "category_rates": {}}, "learning_rate": 1e-3}
    out = apply_params(base, {"dropout.dataset_rate": 0.7, "dropout.category_rates.domain": 0.2, "learning_rate": 3e-4})
    assert out == {"dropout": {"dataset_rate": 0.7, "sample_rate": 0.5, "category_rates": {"domain": 0.2}}, "learning_rate": 3e-4}
    assert base["dropout"]["dataset_rate"] == 0.5  # the base is not touched
    with pytest.raises(ValueError, match="not a section"):
        apply_params({"learning_rate": 1.0}, {"learning_rate.x": 1})


def test_round_plan_covers_the_schedule():
    assert [round_bounds(10, 3, r) for r in (1, 2, 3)] == [(0, 3), (3, 6), (6, 10)]
    with pytest.raises(ValueError):
        round_bounds(2, 3, 1)
    plans = [round_plan(100, 4, r, warmup_steps=10, min_lr_ratio=0.1) for r in (1, 2, 3, 4)]
    assert sum(p["max_steps"] for p in plans) == 100
    assert plans[0]["warmup_steps"] == 10 and all(p["warmup_steps"] == 0 for p in plans[1:])
    scales = [p["lr_scale"] for p in plans]
    assert scales[0] == 1.0 and scales == sorted(scales, reverse=True)  # the global cosine only decays
    # round 2 ends where round 3 starts: start * floor of round 2 == start of round 3
    assert plans[1]["lr_scale"] * plans[1]["min_lr_ratio"] == pytest.approx(
        round_plan(100, 4, 3, warmup_steps=10, min_lr_ratio=0.1)["lr_scale"], rel=0.05)


def test_round_train_config_continues_from_previous_round():
    train = {"max_steps": 40, "warmup_steps": 4, "min_lr_ratio": 0.1, "learning_rate": 1e-3, "seed": 7,
             "checkpoint_every": 50, "model": {"kind": "tiny"}, "output": "x"}
    r1 = round_train_config(train, 2, 1, output="/t/round-1/model", previous_output=None)
    assert r1["max_steps"] == 20 and r1["model"] == {"kind": "tiny"} and r1["seed"] == 7 and r1["checkpoint_every"] == 20
    r2 = round_train_config(train, 2, 2, output="/t/round-2/model", previous_output="/t/round-1/model")
    assert r2["model"] == {"kind": "hf", "path": "/t/round-1/model"} and r2["seed"] == 8 and r2["warmup_steps"] == 0
    assert 0 < r2["learning_rate"] < 1e-3
    with pytest.raises(ValueError, match="previous round"):
        round_train_config(train, 2, 2, output="o", previous_output=None)


def test_build_report_carries_every_key_every_round():
    spec = ObjectiveSpec(terms=[ObjectiveTerm(metric="acc", mode="max", weight=2)],
                         round_terms=[ObjectiveTerm(metric="loss", mode="min")])
    first = build_report({"loss": 2.5}, spec, 1, 3)
    assert first["round_objective"] == -2.5 and math.isnan(first["objective"]) and math.isnan(first["acc"])
    last = build_report({"loss": 2.0, "acc": 0.3}, spec, 3, 3)
    assert last == {"round": 3, "round_objective": -2.0, "objective": 0.6, "acc": 0.3, "loss": 2.0}


@pytest.mark.parametrize("name", ["demo", "paper"])
def test_shipped_configs_load_and_name_their_command(repo, name):
    path = repo / "tuning" / "configs" / f"{name}.yaml"
    assert path.read_text().startswith("# "), "every YAML starts with the command that runs it"
    assert "tuning/search.py" in path.read_text().splitlines()[0] + path.read_text().splitlines()[1]
    config = load_config(TuneConfig, path, section="tune")
    assert "dropout.dataset_rate" in config.space and "dropout.sample_rate" in config.space
    with pytest.raises(ConfigError):
        load_config(TuneConfig, path, ["objective.combine=wrong"], section="tune")


def test_searcher_and_scheduler_from_config():
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.optuna import OptunaSearch

    from treasure.tune.search import expected_trials, scheduler, searcher, tune_space

    space = {"dropout.dataset_rate": {"type": "uniform", "low": 0.0, "high": 0.9, "q": 0.05},
             "dropout.category_rates.domain": {"type": "choice", "values": [0.2, 0.5]}}
    pareto = cfg(space=space, searcher={"type": "optuna"}, rounds=3, num_samples=6, objective={
        "combine": "pareto", "terms": [{"metric": "longtail.inference.accuracy", "mode": "max"},
                                       {"metric": "longtail.length.violation_rate", "mode": "min"}]})
    alg = searcher(pareto)
    assert isinstance(alg, OptunaSearch) and alg.metric == ["longtail.inference.accuracy", "longtail.length.violation_rate"]
    assert alg.mode == ["max", "min"]
    asha = scheduler(pareto)
    assert isinstance(asha, ASHAScheduler) and asha.metric == "round_objective" and asha._max_t == 3
    assert isinstance(scheduler(cfg(scheduler={"type": "fifo"})), FIFOScheduler) and searcher(cfg()) is None
    assert set(tune_space(pareto.space)) == set(space) and expected_trials(pareto) == 6
