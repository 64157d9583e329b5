"""TrainConfig: the demo section loads, `markers: off` is the baseline, bad combinations fail loudly."""

from __future__ import annotations

import pytest

from treasure.config import ConfigError, load_config
from treasure.train.config import TrainConfig


def test_demo_section_and_baseline_override(repo):
    path = repo / "pipelines/configs/demo.yaml"
    marked = load_config(TrainConfig, path, section="train")
    baseline = load_config(TrainConfig, path, ["markers=off", "output=runs/demo/checkpoints/baseline"], section="train")
    assert marked.markers is True and baseline.markers is False
    assert marked.model_name == "treasure-marked" and baseline.model_name == "treasure-baseline"
    assert marked.model == baseline.model and marked.max_steps == baseline.max_steps


@pytest.mark.parametrize("override, message", [
    (["strategy=fsdp"], "fsdp needs GPUs"),
    (["lora.enabled=true"], "lora.enabled with model.kind=tiny"),
    (["model.kind=hf"], "needs model.path"),
    (["model.kind=smollm2"], "kind: hf, path: packaged:smollm2"),
    (["model.num_heads=7"], "must divide"),
    (["max_stepz=3"], "max_stepz"),
])
def test_bad_configs_fail_loudly(repo, override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(TrainConfig, repo / "pipelines/configs/ci.yaml", override, section="train")  # the tiny model
