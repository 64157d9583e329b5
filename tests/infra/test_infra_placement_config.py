"""The CI config and the placement plumbing without Ray: pipeline.root, the stages' pools (treasure.resources.Pool).

The real placement on a multi-node cluster is test_infra_multinode.py; here the pure parts: what
the fields accept, what reaches Ray (ScalingConfig resources, the annotate bundles the fail-fast
check packs), and that empty placement fields leave recorded configs unchanged (a rerun resumes).
"""

from __future__ import annotations

import pytest
import yaml
from pydantic import ValidationError

from treasure.annotate.config import AnnotateConfig
from treasure.annotate.stage import pools
from treasure.cluster import placement_problem
from treasure.config import ConfigError, load_config
from treasure.evaluate.config import EvaluateConfig, GenerationConfig
from treasure.pipeline import PipelineConfig
from treasure.resources import Pool, placement_problem_of
from treasure.train.config import TrainConfig

PINNED = ["annotate.rules.pool.resources={annotate_node: 0.01}", "annotate.quality.pool.resources={annotate_node: 0.01}",
          "train.pool.resources={train_node: 1}", "train.pool.count=2", "train.pool.num_cpus=1",
          "evaluate.generation.pool.resources={annotate_node: 0.01}"]


@pytest.fixture
def ci(repo):
    return repo / "pipelines/configs/ci.yaml"


def test_ci_config_has_the_demo_sections_and_is_small(ci, repo):
    raw, demo = yaml.safe_load(ci.read_text()), yaml.safe_load((repo / "pipelines/configs/demo.yaml").read_text())
    assert set(raw) == set(demo)
    cfg = load_config(PipelineConfig, ci)
    assert cfg.pipeline.stages == list(demo["pipeline"]["stages"])
    sources = cfg.normalize.sources.values()
    assert sum(getattr(s, "max_rows", None) or getattr(s, "count", 0) for s in sources) <= 500
    assert not cfg.annotate.tagger.enabled and cfg.annotate.quality.engine == "zipf"
    assert cfg.train.model.num_layers <= 2 and cfg.train.max_steps <= 10 and cfg.train.model.vocab_size <= 1024
    assert cfg.evaluate.win_rate.prompts <= 8 and cfg.evaluate.win_rate.judge.type != "none"
    assert ci.read_text().splitlines()[1].startswith("# Run:")
    assert cfg.train.pool.count * cfg.train.pool.num_cpus <= 2  # the job-submit test's head has 2 CPUs


def test_root_moves_every_output_but_not_the_bundled_sources(ci, repo, monkeypatch, tmp_path):
    monkeypatch.chdir(repo)
    stages = load_config(PipelineConfig, ci, [f"pipeline.root={tmp_path}"]).stage_configs()
    assert stages["normalize"].input == str(repo / "data")
    assert stages["normalize"].output == str(tmp_path / "runs/ci/normalized")
    assert stages["annotate"].input == stages["normalize"].output
    assert stages["train_baseline"].output == str(tmp_path / "runs/ci/checkpoints/baseline")
    assert stages["evaluate"].baseline == stages["train_baseline"].output
    assert stages["evaluate"].marked == stages["train_marked"].output == str(tmp_path / "runs/ci/checkpoints/marked")
    assert stages["train_marked"].model.tokenizer_cache == str(tmp_path / "runs/ci/tokenizers")
    # The CI judge is the run's own baseline checkpoint: it moves with the run.
    assert stages["evaluate"].win_rate.judge.model == stages["train_baseline"].output


def test_root_on_s3_and_no_root(ci, repo, monkeypatch):
    monkeypatch.chdir(repo)
    s3 = load_config(PipelineConfig, ci, ["pipeline.root=s3://bucket/ci/"]).stage_configs()
    assert s3["evaluate"].output == "s3://bucket/ci/runs/ci/eval"
    assert s3["train_marked"].model.tokenizer_cache == "runs/ci/tokenizers"  # a local folder of the driver: left as written
    local = load_config(PipelineConfig, ci).stage_configs()
    assert local["evaluate"].output == str(repo / "runs/ci/eval")


def test_placement_overrides_reach_every_stage(ci):
    cfg = load_config(PipelineConfig, ci, PINNED)
    assert cfg.annotate.rules.pool.resources == {"annotate_node": 0.01}
    assert cfg.train.resources_per_worker == {"CPU": 1, "train_node": 1.0}
    stages = cfg.stage_configs()
    assert stages["train_baseline"].pool.resources == stages["train_marked"].pool.resources == {"train_node": 1.0}
    assert stages["evaluate"].generation.pool.resources == {"annotate_node": 0.01}
    # Pinned annotation fits a 1-CPU node that offers annotate_node, and nothing else.
    annotate = pools(cfg.annotate)
    bundles = [b for p in annotate.values() for b in p.bundles()]
    assert bundles == [{"CPU": 0.5, "annotate_node": 0.01}, {"CPU": 0.5, "annotate_node": 0.01}]
    assert placement_problem_of(annotate, [{"CPU": 1}, {"CPU": 1, "annotate_node": 1}]) is None
    msg = placement_problem(bundles, [{"CPU": 8}], "annotate tasks and actors", "start nodes with the resources")
    assert msg and "annotate_node: 0" in msg and msg.endswith("start nodes with the resources")
    assert "annotate.rules.pool + annotate.quality.pool" in placement_problem_of(annotate, [{"CPU": 8}])


def test_empty_placement_fields_stay_out_of_recorded_configs():
    a = AnnotateConfig(input="a", output="b")
    t = TrainConfig(input="a", output="b")
    e = EvaluateConfig(input="a", baseline="b", marked="c", output="d")
    assert "resources" not in a.model_dump()["rules"]["pool"] and "resources" not in a.model_dump()["quality"]["pool"]
    assert "resources" not in t.model_dump()["pool"] and "resources" not in e.model_dump()["generation"]["pool"]
    pinned = TrainConfig(input="a", output="b", pool={"resources": {"train_node": 1}})
    assert TrainConfig.model_validate(pinned.model_dump(mode="json")).pool.resources == {"train_node": 1.0}


@pytest.mark.parametrize("bad", [{"CPU": 1}, {"GPU": 1}, {"train_node": 0}, {"train_node": -1}])
def test_placement_fields_take_positive_custom_resources_only(bad):
    with pytest.raises(ValidationError, match="resources"):
        TrainConfig(input="a", output="b", pool={"resources": bad})
    with pytest.raises(ValidationError, match="resources"):
        GenerationConfig(pool={"resources": bad})
    with pytest.raises(ValidationError, match="resources"):
        Pool(resources=bad)
    with pytest.raises(ValidationError, match="resources"):
        AnnotateConfig(input="a", output="b", tagger={"pool": {"resources": bad}})


def test_placement_override_typo_fails_loudly(ci):
    with pytest.raises(ConfigError, match="resource"):
        load_config(PipelineConfig, ci, ["train.pool.resource={train_node: 1}"])
    with pytest.raises(ConfigError, match="num_workers"):  # the old spelling is refused, not ignored
        load_config(PipelineConfig, ci, ["train.num_workers=2"])
