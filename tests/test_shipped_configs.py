"""Every shipped YAML loads into its config model (a typo in any file fails here, not in a run)."""

from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PIPELINE_CONFIGS = sorted((REPO / "pipelines" / "configs").glob("*.yaml"))
TUNE_CONFIGS = sorted((REPO / "tuning" / "configs").glob("*.yaml"))


def test_every_yaml_is_covered():
    """New YAML under these folders must be added to a test below (or to its area's tests)."""
    names = {p.name for p in PIPELINE_CONFIGS}
    shipped = {"demo.yaml", "paper.yaml", "ci.yaml", "single_gpu.yaml", "taxonomy_demo.yaml"}
    assert shipped <= names
    assert names - shipped == set(), names
    assert {p.name for p in TUNE_CONFIGS} >= {"demo.yaml"}


@pytest.mark.parametrize("name", ["demo.yaml", "paper.yaml", "ci.yaml", "single_gpu.yaml"])
def test_pipeline_configs_load_and_are_wired(name):
    from treasure.config import load_config
    from treasure.pipeline import PipelineConfig

    cfg = load_config(PipelineConfig, REPO / "pipelines" / "configs" / name)
    stages = cfg.stage_configs()
    assert stages["train_baseline"].markers is False and stages["train_marked"].markers is True
    assert {c.experiment for c in stages.values()} == {cfg.pipeline.experiment}


@pytest.mark.parametrize("path", PIPELINE_CONFIGS + TUNE_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_yaml_starts_with_the_command_that_runs_it(path):
    head = path.read_text().splitlines()[:6]
    if path.name.startswith("taxonomy"):
        return  # data, not a runnable config
    assert any(line.startswith("#") and ("Run" in line or "make" in line) for line in head), head


def test_demo_taxonomy_loads():
    from treasure.taxonomy import load_taxonomy

    tax = load_taxonomy(REPO / "pipelines" / "configs" / "taxonomy_demo.yaml")
    assert tax.category("length_bucket").allowed == ["concise", "medium", "long"]
    assert tax.version != load_taxonomy("paper").version


@pytest.mark.parametrize("path", TUNE_CONFIGS, ids=lambda p: p.name)
def test_tune_configs_load(path):
    from treasure.config import load_config
    from treasure.tune.config import TuneConfig

    cfg = load_config(TuneConfig, path, section="tune")
    assert cfg.experiment


def test_stage_sections_override_like_the_scripts():
    from treasure.config import load_config
    from treasure.train.config import TrainConfig

    cfg = load_config(TrainConfig, REPO / "pipelines/configs/demo.yaml", ["markers=off", "output=runs/x"], section="train")
    assert cfg.markers is False and cfg.output == "runs/x"
    raw = yaml.safe_load((REPO / "pipelines/configs/demo.yaml").read_text())
    assert set(raw) == {"pipeline", "normalize", "annotate", "train", "evaluate"}


@pytest.mark.parametrize("name", ["demo.yaml", "paper.yaml", "ci.yaml"])
def test_evaluation_asks_only_what_the_trained_block_holds(name):
    """The evaluate stage refuses (after both models trained) to ask about a category outside the marker
    block; a shipped config must never get that far to find out."""
    from treasure.config import load_config
    from treasure.pipeline import PipelineConfig
    from treasure.taxonomy import load_taxonomy

    stages = load_config(PipelineConfig, REPO / "pipelines" / "configs" / name).stage_configs()
    taxonomy_ref = stages["train_marked"].taxonomy
    taxonomy = load_taxonomy(REPO / taxonomy_ref if taxonomy_ref.endswith(".yaml") else taxonomy_ref)
    ev = stages["evaluate"]
    asked = {*ev.categories.inference_categories, *ev.categories.adherence_categories, ev.length_control.length_marker}
    assert asked & set(taxonomy.names) <= set(taxonomy.block_names), (sorted(asked - set(taxonomy.block_names)), taxonomy.block_names)


def test_single_gpu_recipe_is_one_gpu_lora_bf16_and_vllm():
    from treasure.config import load_config
    from treasure.pipeline import PipelineConfig

    stages = load_config(PipelineConfig, REPO / "pipelines" / "configs" / "single_gpu.yaml").stage_configs()
    train, evaluate = stages["train_marked"], stages["evaluate"]
    assert train.use_gpu and train.pool.count == 1 and train.lora.enabled and train.precision == "bf16"
    assert train.model.kind == "hf" and "/" in train.model.path  # a Hub id
    assert evaluate.generation.backend == "vllm" and evaluate.generation.dtype == "bfloat16"
    assert evaluate.generation.pool.num_gpus == 1 and stages["annotate"].tagger.engine == "vllm"
