"""The model runtime's one home: layout names, `models:/` resolution, one spelling of the packaged model."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

from treasure.models.checkpoint import META, REQUIRED, TAXONOMY, find_checkpoint_root, registry_name, resolve_checkpoint
from treasure.models.packaged import PACKAGED_SMOLLM2

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("old", ["treasure.engine", "treasure.checkpoint", "treasure.packaged", "treasure.train.checkpoint"])
def test_old_homes_are_gone(old):
    assert importlib.util.find_spec(old) is None, old


def test_the_tagger_engines_do_not_reuse_the_generation_engines_names():
    import treasure.annotate.tagger_engines as tagger
    import treasure.models.engine as engine

    classes = lambda m: {n for n, v in vars(m).items() if isinstance(v, type) and v.__module__ == m.__name__}  # noqa: E731
    assert classes(tagger) & classes(engine) == set()
    assert {"TransformersTagger", "VLLMTagger"} <= classes(tagger)


def test_layout_names_and_checkpoint_root(tmp_path):
    assert TAXONOMY in REQUIRED and META in REQUIRED
    nested = tmp_path / "checkpoint"
    nested.mkdir()
    (nested / TAXONOMY).write_text("x")
    assert find_checkpoint_root(tmp_path) == nested  # MLflow nests the artifact one level down
    assert find_checkpoint_root(nested) == nested
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=TAXONOMY):
        find_checkpoint_root(empty)


def test_registry_names_and_unknown_checkpoints():
    assert registry_name("models:/treasure-marked/3/") == "treasure-marked/3"
    with pytest.raises(FileNotFoundError, match="models:/name/version"):
        resolve_checkpoint("/nonexistent/ckpt")


def test_old_spelling_of_the_packaged_model_fails_naming_the_new_one():
    from pydantic import ValidationError

    from treasure.annotate.config import QualityConfig, TaggerConfig
    from treasure.models.engine import EngineConfig
    from treasure.train.config import ModelConfig

    assert TaggerConfig().model == QualityConfig().model == PACKAGED_SMOLLM2
    for make in (lambda: TaggerConfig(model="smollm2"), lambda: QualityConfig(model="smollm2"),
                 lambda: EngineConfig(model="smollm2"), lambda: ModelConfig(kind="smollm2")):
        with pytest.raises(ValidationError, match="packaged:smollm2"):
            make()
    packaged = ModelConfig(kind="hf", path=PACKAGED_SMOLLM2)
    assert packaged.packaged and not ModelConfig(kind="hf", path="/models/x").packaged


def test_shipped_configs_spell_the_packaged_model_one_way():
    """Every model-naming field of the shipped YAML that means the packaged SmolLM2 says packaged:smollm2."""
    seen = []

    def walk(node, path):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{path}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}[{i}]")
        elif isinstance(node, str) and "smollm2" in node.lower() and "/" not in node:
            seen.append((path, node))

    for f in sorted((REPO / "pipelines" / "configs").glob("*.yaml")) + sorted((REPO / "tuning" / "configs").glob("*.yaml")):
        walk(yaml.safe_load(f.read_text()), f.name)
    assert seen, "the demo configs name the packaged model"
    assert {v for _, v in seen} == {PACKAGED_SMOLLM2}, seen
