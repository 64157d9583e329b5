"""TuneConfig: the search over marker-dropout (and any other training) hyperparameters.

Search-space keys are the dotted names of the train-config fields they set, so one name holds
across YAML, code, Tune and MLflow: ``dropout.dataset_rate``, ``dropout.sample_rate``,
``dropout.category_rates.domain``, ``optimizer.lr``... A trial applies each sampled value to the
base train config exactly like a command-line override (``key.sub=value``), and the base config is
validated with every key before the search starts, so a misspelt key fails at once.

Read with ``load_config(TuneConfig, "tuning/configs/demo.yaml", overrides, section="tune")``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Field, model_validator

from treasure.config import ConfigError, StrictModel, set_dotted
from treasure.tune.objective import ObjectiveSpec


class Choice(StrictModel):
    """Sample one of `values` uniformly."""

    type: Literal["choice"] = Field(description="Sample uniformly from a list.")
    values: list[Any] = Field(min_length=1, description="The candidates.")


class Grid(StrictModel):
    """Try every one of `values` (a grid axis; the grid is crossed with the other grid keys)."""

    type: Literal["grid"] = Field(description="Grid axis: every value is tried (times num_samples).")
    values: list[Any] = Field(min_length=1, description="The grid points.")


class Uniform(StrictModel):
    """A float drawn uniformly from [low, high], optionally rounded to a multiple of `q`."""

    type: Literal["uniform"] = Field(description="Uniform float.")
    low: float = Field(description="Lower bound.")
    high: float = Field(description="Upper bound.")
    q: float | None = Field(None, gt=0, description="Round samples to a multiple of q (None: no rounding).")

    @model_validator(mode="after")
    def _order(self) -> "Uniform":
        if not self.low < self.high:
            raise ValueError(f"uniform needs low < high, got {self.low} >= {self.high}")
        return self


class LogUniform(StrictModel):
    """A float drawn uniformly in log space from [low, high] (learning rates)."""

    type: Literal["loguniform"] = Field(description="Log-uniform float.")
    low: float = Field(gt=0, description="Lower bound (> 0).")
    high: float = Field(gt=0, description="Upper bound.")

    @model_validator(mode="after")
    def _order(self) -> "LogUniform":
        if not self.low < self.high:
            raise ValueError(f"loguniform needs low < high, got {self.low} >= {self.high}")
        return self


class RandInt(StrictModel):
    """An integer drawn uniformly from [low, high)."""

    type: Literal["randint"] = Field(description="Uniform integer, high exclusive.")
    low: int = Field(description="Lower bound (inclusive).")
    high: int = Field(description="Upper bound (exclusive).")

    @model_validator(mode="after")
    def _order(self) -> "RandInt":
        if not self.low < self.high:
            raise ValueError(f"randint needs low < high, got {self.low} >= {self.high}")
        return self


Domain = Annotated[Union[Choice, Grid, Uniform, LogUniform, RandInt], Field(discriminator="type")]


class SearcherSpec(StrictModel):
    """How trial configs are proposed."""

    type: Literal["basic", "optuna"] = Field(
        "basic", description="'basic': Tune's random/grid generator; 'optuna': TPE (single objective) or NSGA-II (objective.combine=pareto)."
    )


class SchedulerSpec(StrictModel):
    """Early stopping of bad trials from their per-round reports."""

    type: Literal["asha", "fifo"] = Field("asha", description="'asha': stop trials whose round_objective trails at a rung; 'fifo': run every trial to the end.")
    grace_period: int = Field(1, ge=1, description="Rounds every trial runs before it can be stopped.")
    reduction_factor: float = Field(2.0, ge=2.0, description="ASHA keeps the best 1/reduction_factor of trials at each rung.")


class ResourcesSpec(StrictModel):
    """What each trial reserves, so trials never starve each other or the data pipeline."""

    trial_cpus: float = Field(1.0, ge=0.0, description="CPUs reserved by the trial process (it trains in-process when train.pool.count allows; see docs/tuning.md).")
    trial_gpus: float = Field(0.0, ge=0.0, description="GPUs reserved by the trial process (a GPU group per trial on a cluster).")
    trial_memory_mb: int = Field(
        512, ge=1, description="Memory (MiB) Ray reserves for the trial process; also what lets a 0-CPU trial be a valid Ray resource request."
    )
    max_concurrent_trials: int = Field(1, ge=1, description="Trials running at once; on 2 cores keep 1.")
    reserve_cpus: float = Field(
        0.0, ge=0.0, description="CPUs left free for Ray Data tasks and train workers outside the trial; the search fails fast if the cluster cannot hold the trials plus this."
    )


class TuneConfig(StrictModel):
    """One search: base configs, space, objective, searcher, scheduler, resources, storage."""

    experiment: str = Field("treasure-tune", description="MLflow experiment holding the parent run and one nested run per trial.")
    name: str = Field("dropout-search", pattern=r"^[A-Za-z0-9_.-]+$", description="Search name: the Tune experiment folder under storage_path and the MLflow parent run name.")
    storage_path: str = Field("runs/tune", description="Where Tune keeps trial state (restore reads it) and trials keep their checkpoints and evaluations.")
    seed: int = Field(0, description="Seed of the searcher; each trial's train seed stays the base config's unless the space sets `seed`.")
    pipeline_config: str = Field("pipelines/configs/demo.yaml", description="YAML file holding the base train and evaluate sections.")
    train_section: str = Field("train", description="Section of pipeline_config read as the base TrainConfig.")
    evaluate_section: str = Field("evaluate", description="Section of pipeline_config read as the base EvaluateConfig.")
    train_overrides: list[str] = Field(default_factory=list, description="key=value overrides applied to the base train config for every trial (before the sampled values).")
    evaluate_overrides: list[str] = Field(default_factory=list, description="key=value overrides applied to the base evaluate config for every trial.")
    heldout_rows: int = Field(64, ge=1, le=100000, description="Held-out rows scored for the per-round held-out loss (heldout.{loss,tail.loss,head.loss}).")
    round_evaluate: bool = Field(False, description="Also run the evaluation suite after rounds 1..R-1 (with round_evaluate_overrides); off: those rounds report the held-out loss only.")
    round_evaluate_overrides: dict[str, Any] = Field(
        default_factory=dict,
        description="Evaluate-config values (dotted keys) for the cheap evaluation after rounds 1..R-1, e.g. fewer prompts, no judge; the last round runs the full suite.",
    )
    space: dict[str, Domain] = Field(min_length=1, description="Search space: train-config field path (e.g. dropout.dataset_rate) → domain.")
    rounds: int = Field(2, ge=1, le=1000, description="Training is split into this many equal rounds; each reports round metrics (the scheduler's time unit).")
    num_samples: int = Field(4, ge=1, description="Trials to sample (with grid keys: repeats of the whole grid).")
    objective: ObjectiveSpec = Field(description="What the search optimizes (see treasure.tune.objective).")
    searcher: SearcherSpec = Field(default_factory=SearcherSpec, description="How trial configs are proposed.")
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec, description="Early stopping.")
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec, description="Per-trial resources and concurrency.")
    register_model: str | None = Field("treasure-tune-best", description="MLflow registered-model name for the best trial's checkpoint (None: do not register).")
    resume: Literal["auto", "never"] = Field(
        "auto", description="'auto': continue an interrupted search found at storage_path/name with Tuner.restore; 'never': fail if one exists."
    )

    @model_validator(mode="after")
    def _consistent(self) -> "TuneConfig":
        if self.objective.combine == "pareto" and self.searcher.type != "optuna":
            raise ValueError("objective.combine=pareto needs searcher.type=optuna (the basic generator has no multi-objective mode)")
        grids = [k for k, d in self.space.items() if isinstance(d, Grid)]
        if grids and self.searcher.type == "optuna":
            raise ValueError(f"searcher optuna cannot take grid axes {grids}; use choice")
        if self.scheduler.type == "asha" and self.scheduler.grace_period >= self.rounds:
            raise ValueError(
                f"scheduler.grace_period ({self.scheduler.grace_period}) must be below rounds ({self.rounds}) for ASHA to stop anything; use scheduler.type=fifo"
            )
        return self


def apply_params(base: dict, params: dict[str, Any]) -> dict:
    """A copy of the base config dict with each sampled `params` value set at its dotted key.

    >>> apply_params({"dropout": {"dataset_rate": 0.5}}, {"dropout.category_rates.domain": 0.1})
    {'dropout': {'dataset_rate': 0.5, 'category_rates': {'domain': 0.1}}}
    """
    import copy

    data = copy.deepcopy(base)
    for key, value in params.items():
        try:
            set_dotted(data, key, value)
        except ConfigError as e:
            raise ConfigError(f"search key {key!r}: {e}") from None
    return data


def example_value(domain: Domain) -> Any:
    """A representative value of a domain, used to validate a search key before the search starts."""
    if isinstance(domain, (Choice, Grid)):
        return domain.values[0]
    return domain.low
