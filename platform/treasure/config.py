"""Config loading: YAML files plus `key.sub=value` command-line overrides into pydantic models.

Every stage owns one pydantic model (``extra="forbid"``, documented fields) in its own module;
this module only knows how to read YAML, apply overrides and report errors with the file name.
Experiment config (what is logged to MLflow) stays apart from environment settings (tracking URI,
Ray address, credentials), which come from the environment.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Base of every config model: unknown keys are errors, so a typo fails loudly."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the file and the key."""


def set_dotted(data: dict, key: str, value: Any) -> None:
    """Set ``data[a][b][c] = value`` for the dotted key ``a.b.c`` in place, creating missing sections.

    The one walker of dotted config keys: command-line overrides (`apply_override`) and tune's
    sampled parameters (`treasure.tune.config.apply_params`) both set values through it.
    A key that is empty or steps through a value that is not a section raises `ConfigError`.

    >>> d = {"dropout": {"dataset_rate": 0.5}}
    >>> set_dotted(d, "dropout.category_rates.domain", 0.1); d
    {'dropout': {'dataset_rate': 0.5, 'category_rates': {'domain': 0.1}}}
    >>> set_dotted({"dropout": 0.5}, "dropout.dataset_rate", 0.1)
    Traceback (most recent call last):
    ...
    treasure.config.ConfigError: 'dropout' is not a section
    """
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError("empty key")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{p!r} is not a section")
    node[parts[-1]] = value


def apply_override(data: dict, override: str) -> None:
    """Apply one `a.b.c=value` override in place; `value` is parsed as a YAML scalar or list."""
    if "=" not in override:
        raise ConfigError(f"override {override!r} must look like key.sub=value")
    key, raw = override.split("=", 1)
    try:
        set_dotted(data, key, yaml.safe_load(raw) if raw.strip() else None)
    except ConfigError as e:
        raise ConfigError(f"override {override!r}: {e}") from None


def load_config(model: type[M], path: str | Path | None = None, overrides: list[str] | None = None, section: str | None = None) -> M:
    """Read YAML (optionally one `section` of it), apply overrides, validate into `model`."""
    data: dict[str, Any] = {}
    where = "<defaults>"
    if path is not None:
        where = str(path)
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"{where}: cannot read config: {e}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{where}: top level must be a mapping")
        data = copy.deepcopy(loaded.get(section, {}) if section else loaded)
    for o in overrides or []:
        try:
            apply_override(data, o)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
    try:
        return model.model_validate(data)
    except ValidationError as e:
        lines = [f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}" for err in e.errors()]
        raise ConfigError(f"{where}: invalid {model.__name__}\n  " + "\n  ".join(lines)) from None


def cli_args(description: str, default_config: str | None = None, argv: list[str] | None = None,
             prog: str | None = None) -> argparse.Namespace:
    """The common command line of every pipeline script: --config FILE and KEY=VALUE overrides."""
    parser = argparse.ArgumentParser(description=description, prog=prog)
    parser.add_argument("--config", default=default_config, help="YAML config file")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides applied after the file")
    return parser.parse_args(argv)


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """Nested dict → {'a.b.c': value}: the MLflow param names of a resolved config."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
