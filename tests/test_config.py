"""Config loading: YAML sections, key.sub=value overrides, clear errors naming file and key."""

import subprocess
import sys

import pytest
from pydantic import Field

from treasure.config import ConfigError, StrictModel, apply_override, flatten, load_config
from treasure.dropout import DropoutConfig


class Inner(StrictModel):
    rate: float = Field(0.5, ge=0, le=1, description="a rate")


class Outer(StrictModel):
    name: str = Field("x", description="a name")
    inner: Inner = Field(default_factory=Inner, description="nested")
    dropout: DropoutConfig = Field(default_factory=DropoutConfig, description="dropout")


def test_section_and_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("stage:\n  name: demo\n  inner: {rate: 0.2}\nother: {}\n")
    cfg = load_config(Outer, f, ["inner.rate=0.7", "dropout.category_rates={task: 0.1}"], section="stage")
    assert cfg.name == "demo" and cfg.inner.rate == 0.7 and cfg.dropout.category_rates == {"task": 0.1}
    assert flatten(cfg.model_dump())["inner.rate"] == 0.7


@pytest.mark.parametrize(
    "body, overrides, expect",
    [
        ("stage: {nmae: typo}\n", [], "nmae"),
        ("stage: {inner: {rate: 3}}\n", [], "inner.rate"),
        ("stage: {}\n", ["inner.rate"], "key.sub=value"),
        ("stage: [1, 2]\n", [], "invalid Outer"),
        (": : :\n", [], "cannot read config"),
    ],
)
def test_errors_name_file_and_key(tmp_path, body, overrides, expect):
    f = tmp_path / "bad.yaml"
    f.write_text(body)
    with pytest.raises(ConfigError) as e:
        load_config(Outer, f, overrides, section="stage")
    assert expect in str(e.value) and "bad.yaml" in str(e.value)


def test_override_into_non_section_fails():
    with pytest.raises(ConfigError, match="not a section"):
        apply_override({"a": 1}, "a.b=2")


def test_core_imports_no_ray():
    """The marker core is pure: importing it must not pull in Ray."""
    code = (
        "import sys; import treasure.taxonomy, treasure.template, treasure.dropout, treasure.chat_format, "
        "treasure.config, treasure.storage; print('ray' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
