"""The whole method in order: normalize → annotate → train baseline and marked → evaluate → register.

One YAML file holds every stage's section (each validated by that stage's own config model) plus
a `pipeline:` section. Each stage skips itself when its output already holds a committed result
of the same config, so a rerun after a crash resumes at the first unfinished stage. All stage
runs nest under one MLflow parent run in one experiment, so two pipeline runs compare side by
side in the MLflow UI.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from pydantic import Field, model_validator

from treasure.annotate.config import AnnotateConfig
from treasure.config import StrictModel
from treasure.corpus.config import NormalizeConfig
from treasure.evaluate.config import EvaluateConfig
from treasure.train.config import TrainConfig

STAGES = ("normalize", "annotate", "train_baseline", "train_marked", "evaluate", "register")


class PipelineSection(StrictModel):
    """Settings of the pipeline itself (not of any stage)."""

    experiment: str = Field("treasure-hunt", description="MLflow experiment of every stage run (overrides the stages' own).")
    run_name: str = Field("pipeline", description="Name of the MLflow parent run.")
    baseline_output: str = Field(description="Checkpoint folder of the baseline (the `train` section with markers off).")
    stages: list[str] = Field(default_factory=lambda: list(STAGES), description=f"Stages to run, in order; any of {list(STAGES)}.")
    registered_alias: str = Field("candidate", description="MLflow alias set on the marked model version after evaluation.")
    root: str | None = Field(None, description="Folder (local path or s3:// URI) that every relative stage path resolves "
                             "against instead of the working directory: stage outputs, the inputs one stage reads from "
                             "another, the checkpoints (also as evaluate.win_rate.judge.model when the judge is one of them), and "
                             "train.model.tokenizer_cache (local roots only; unset, it stays as written). "
                             "normalize.input (the bundled sources) still resolves against the working directory. "
                             "One override moves a whole run elsewhere, e.g. `pipeline.root=/tmp/ci-run`.")

    @model_validator(mode="after")
    def _known(self) -> "PipelineSection":
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown:
            raise ValueError(f"unknown stages {unknown}; known: {list(STAGES)}")
        return self


class PipelineConfig(StrictModel):
    """A whole pipeline: one section per stage. `train` describes the marked model."""

    pipeline: PipelineSection
    normalize: NormalizeConfig
    annotate: AnnotateConfig
    train: TrainConfig
    evaluate: EvaluateConfig

    @model_validator(mode="after")
    def _wired(self) -> "PipelineConfig":
        """Stages must read what the stage before wrote; a mismatch is a config error, not a silent fork."""
        links = [
            ("annotate.input", self.annotate.input, "normalize.output", self.normalize.output),
            ("train.input", self.train.input, "annotate.output", self.annotate.output),
            ("evaluate.input", self.evaluate.input, "annotate.output", self.annotate.output),
            ("evaluate.marked", self.evaluate.marked, "train.output", self.train.output),
            ("evaluate.baseline", self.evaluate.baseline, "pipeline.baseline_output", self.pipeline.baseline_output),
        ]
        bad = [f"{a}={va!r} but {b}={vb!r}" for a, va, b, vb in links if va.rstrip("/") != vb.rstrip("/")]
        if bad:
            raise ValueError("stages are not wired to each other: " + "; ".join(bad))
        if not self.train.markers:
            raise ValueError("train.markers must be true: the `train` section is the marked model (the baseline is derived)")
        if self.train.output.rstrip("/") == self.pipeline.baseline_output.rstrip("/"):
            raise ValueError("pipeline.baseline_output must differ from train.output")
        split = (self.train.heldout_seed, self.train.heldout_fraction)
        if split != (self.evaluate.heldout_seed, self.evaluate.heldout_fraction):
            raise ValueError(f"train.heldout_seed/heldout_fraction={split} but evaluate has "
                             f"{(self.evaluate.heldout_seed, self.evaluate.heldout_fraction)}: evaluation would score training rows")
        if self.annotate.taxonomy != self.train.taxonomy:
            raise ValueError(f"annotate.taxonomy={self.annotate.taxonomy!r} but train.taxonomy={self.train.taxonomy!r}")
        return self

    def stage_configs(self) -> dict[str, StrictModel]:
        """Each stage's config as it runs: one experiment for all; the baseline derived from `train`.

        Local relative paths become absolute here, in the driver: Ray workers may run in another
        working directory (a job's runtime_env), and must still write where the driver reads.
        With `pipeline.root` set they are placed under that root instead (normalize.input excepted).
        """
        exp = {"experiment": self.pipeline.experiment}
        marked = self.train.model_copy(update=exp)
        baseline = self.train.model_copy(update={**exp, "markers": False, "output": self.pipeline.baseline_output})
        configs = {
            "normalize": self.normalize.model_copy(update=exp),
            "annotate": self.annotate.model_copy(update=exp),
            "train_baseline": baseline,
            "train_marked": marked,
            "evaluate": self.evaluate.model_copy(update=exp),
        }
        root = self.pipeline.root
        out = {}
        for name, cfg in configs.items():
            # The bundled sources ship with the code (the job's working_dir), not with the run's outputs.
            keep = ("input",) if name == "normalize" else ()
            out[name] = _absolute_paths(cfg, root, keep)
        # A judge that is one of this run's own checkpoints (the CI config's cheap judge) moves with it.
        ev = out["evaluate"]
        judge = ev.win_rate.judge
        own = {self.train.output.rstrip("/"): out["train_marked"].output,
               self.pipeline.baseline_output.rstrip("/"): out["train_baseline"].output}
        if judge.model.rstrip("/") in own:
            judge = judge.model_copy(update={"model": own[judge.model.rstrip("/")]})
            out["evaluate"] = ev.model_copy(update={"win_rate": ev.win_rate.model_copy(update={"judge": judge})})
        if root and "://" not in root:  # the tokenizer cache is a local folder of the driver
            for name in ("train_baseline", "train_marked"):
                cfg = out[name]
                cache = resolve_path(cfg.model.tokenizer_cache, root)
                out[name] = cfg.model_copy(update={"model": cfg.model.model_copy(update={"tokenizer_cache": cache})})
        return out


PATH_FIELDS = ("input", "output", "baseline", "marked")


def resolve_path(value: str, root: str | None = None) -> str:
    """A stage path as the driver hands it to workers: URIs and absolute paths unchanged, a relative
    path under `root` when given, else absolute from the working directory.

    >>> resolve_path("s3://b/x", "/r"), resolve_path("/abs", "/r"), resolve_path("runs/ci/eval", "s3://b/p")
    ('s3://b/x', '/abs', 's3://b/p/runs/ci/eval')
    >>> resolve_path("runs/a", "/tmp/r")
    '/tmp/r/runs/a'
    """
    if "://" in value or Path(value).is_absolute():
        return value
    if root is None:
        return str(Path(value).resolve())
    if "://" in root:
        return "/".join([root.rstrip("/"), value.strip("/")])
    return str((Path(root) / value).resolve())


def _absolute_paths(cfg: StrictModel, root: str | None = None, keep: tuple[str, ...] = ()) -> StrictModel:
    update = {}
    for field in PATH_FIELDS:
        value = getattr(cfg, field, None)
        if isinstance(value, str):
            update[field] = resolve_path(value, None if field in keep else root)
    return cfg.model_copy(update=update)


def _local_file(value: str) -> str:
    """A path that names an existing local file or folder, made absolute; anything else as written
    (a builtin taxonomy name, a Hub model id, a URI)."""
    return str(Path(value).resolve()) if "://" not in value and Path(value).exists() else value


def driver_paths(cfg: StrictModel) -> StrictModel:
    """A stage config whose relative local paths no longer depend on a worker's working directory:
    the stage paths (input, output, baseline, marked), a taxonomy file, a local model or judge
    folder, the tokenizer cache. Tune trials run in their own folders; this is what lets them run
    the stages without changing directory."""
    cfg = _absolute_paths(cfg)
    update: dict[str, Any] = {}
    if isinstance(getattr(cfg, "taxonomy", None), str):
        update["taxonomy"] = _local_file(cfg.taxonomy)
    model = getattr(cfg, "model", None)
    if model is not None and hasattr(model, "tokenizer_cache"):
        update["model"] = model.model_copy(update={
            "path": _local_file(model.path) if model.path else None, "tokenizer_cache": resolve_path(model.tokenizer_cache),
            "chat_template": _local_file(model.chat_template) if model.chat_template else None})
    win_rate = getattr(cfg, "win_rate", None)
    if win_rate is not None:
        judge = win_rate.judge.model_copy(update={"model": _local_file(win_rate.judge.model)})
        update["win_rate"] = win_rate.model_copy(update={"judge": judge})
    return cfg.model_copy(update=update)


def _runners() -> dict[str, Callable[..., dict]]:
    # Imported here so that loading a config never imports Ray or torch.
    from treasure.annotate import stage as annotate
    from treasure.corpus import stage as normalize
    from treasure.evaluate import stage as evaluate
    from treasure.train import stage as train

    return {"normalize": normalize.run, "annotate": annotate.run, "train_baseline": train.run,
            "train_marked": train.run, "evaluate": evaluate.run}


def register(summaries: dict[str, dict], alias: str) -> dict:
    """Tag the marked model's registered version with the evaluation's headline metrics and an alias."""
    from treasure import tracking
    from treasure.models.checkpoint import read_checkpoint
    from treasure.models.model_card import render

    marked = summaries.get("train_marked", {})
    name, version = marked.get("registered_model"), marked.get("model_version")
    if not name or not version:
        return {"skipped": "the marked training run registered no model version"}
    figures = headline(summaries)
    # The model card with the evaluation figures: the checkpoint's own card was committed before them.
    info = read_checkpoint(marked["output"])
    card = render(info.meta, info.taxonomy, name=name, metrics=marked.get("metrics"), evaluation=figures,
                  lineage={"checkpoint": marked["output"]})
    tracking.update_version(name, str(version), tags={f"eval.{k}": v for k, v in figures.items()}, alias=alias,
                            description=card)
    return {"registered_model": name, "model_version": version, "alias": alias}


def headline(summaries: dict[str, dict]) -> dict[str, Any]:
    """The few numbers a person looks at first (flat, from the evaluation summary)."""
    metrics = summaries.get("evaluate", {}).get("metrics", {})
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def run_stages(configs: dict[str, StrictModel], stages: list[str], *, parent_run_id: str | None = None,
               registered_alias: str = "candidate", log: Callable[[str], None] = print) -> dict[str, dict]:
    """The one place stages are composed: each of `stages` run in order with its config from
    `configs` (through the stage contract, so a committed stage is reused), nested under
    `parent_run_id`; `register` tags the marked model with the evaluation's figures. Returns each
    stage's summary (with its seconds). The pipeline and every tune round call this."""
    runners = _runners()
    summaries: dict[str, dict] = {}
    for i, name in enumerate(stages, 1):
        log(f"[pipeline] stage {i}/{len(stages)} {name}: start")
        t0 = time.time()
        if name == "register":
            summary = register(summaries, registered_alias)
        else:
            summary = runners[name](configs[name], parent_run_id=parent_run_id)
        summary["seconds"] = round(time.time() - t0, 1)
        summaries[name] = summary
        cached = " (already committed: reused)" if summary.get("cached") else ""
        log(f"[pipeline] stage {i}/{len(stages)} {name}: done in {summary['seconds']}s{cached}")
    return summaries


def run_pipeline(config: PipelineConfig, log: Callable[[str], None] = print) -> dict[str, dict]:
    """Run the configured stages in order under one MLflow parent run; returns each stage's summary."""
    import mlflow

    from treasure.tracking import run as tracking_run

    with tracking_run(config.pipeline.experiment, config.pipeline.run_name, config=config) as parent:
        parent_id = parent.info.run_id
        summaries = run_stages(config.stage_configs(), config.pipeline.stages, parent_run_id=parent_id,
                               registered_alias=config.pipeline.registered_alias, log=log)
        for key, value in headline(summaries).items():
            mlflow.log_metric(key.replace("/", "."), float(value))
        summaries["pipeline"] = {"mlflow_run_id": parent_id, "experiment": config.pipeline.experiment}
    return summaries


def summary_table(summaries: dict[str, dict]) -> str:
    """A plain-text table: stage, seconds, output, MLflow run id; then the headline metrics."""
    rows = [("stage", "seconds", "output", "mlflow run")]
    for name in STAGES:
        if name in summaries:
            s = summaries[name]
            rows.append((name, str(s.get("seconds", "")), str(s.get("output", s.get("registered_model", s.get("skipped", "")))),
                         str(s.get("mlflow_run_id", ""))))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    metrics = headline(summaries)
    if metrics:
        lines.append("")
        lines.append("headline metrics (evaluate):")
        lines += [f"  {k:<48} {v:.4g}" if isinstance(v, float) else f"  {k:<48} {v}" for k, v in sorted(metrics.items())]
    if "pipeline" in summaries:
        lines.append(f"\nMLflow parent run {summaries['pipeline']['mlflow_run_id']} in experiment {summaries['pipeline']['experiment']!r}")
    return "\n".join(lines)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """`pipelines/full.py` and `treasure pipeline`: --config FILE plus section.key=value overrides;
    Ray from RAY_ADDRESS or a private local cluster; prints each stage's line and the summary table."""
    import json

    import treasure
    from treasure.cluster import init_ray
    from treasure.config import cli_args, load_config

    args = cli_args(__doc__.splitlines()[0], default_config="pipelines/configs/demo.yaml", argv=argv, prog=prog)
    config = load_config(PipelineConfig, args.config, args.overrides)
    # Local: workers share this machine's files and venv. Under `ray job submit --working-dir .` the
    # job's runtime_env already ships the repository to every worker.
    info = init_ray()
    print(f"[pipeline] Ray: {json.dumps(info, default=str)}", flush=True)
    # Under `ray job submit` this is the runtime_env's uploaded copy, not a checkout on the node.
    print(f"[pipeline] treasure package: {treasure.__file__}", flush=True)
    summaries = run_pipeline(config, log=lambda line: print(line, flush=True))
    print("\n" + summary_table(summaries), flush=True)
    return 0
