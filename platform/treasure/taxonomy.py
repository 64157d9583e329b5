"""The marker taxonomy: categories and their allowed values, loaded from YAML and validated.

The taxonomy is data, not code. A YAML file lists categories in the order they are written into
the marker block; `extends:` starts from another file (a builtin name such as ``paper`` or a path)
and replaces categories by name or appends new ones. Errors name the file and the YAML key path
and line. `Taxonomy.version` is a stable hash of the resolved content, so a checkpoint, a dataset
manifest and a serving request can all say which taxonomy they mean.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

BUILTIN_DIR = Path(__file__).parent / "taxonomies"
# Tag names must be plain identifiers: they are written as <name>...</name> in model text.
NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Marker values are written between tags, so they may not contain markup or line breaks.
VALUE_RE = re.compile(r"^[^<>\n\r]+$")


class TaxonomyError(ValueError):
    """A taxonomy file is malformed; the message names the file, key path and line."""


class Value(BaseModel):
    """One allowed value of an enum category."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    value: str = Field(description="The value as written in the marker block.")
    description: str = Field("", description="Definition shown to the LLM tagger.")

    @field_validator("value")
    @classmethod
    def _plain(cls, v: str) -> str:
        if v != v.strip() or not VALUE_RE.match(v):
            raise ValueError(f"value {v!r} must be non-empty text without '<', '>', line breaks or edge spaces")
        return v


class Bucket(BaseModel):
    """A bucket of a `bucket` category: `value` applies while source < `below` (last: no bound)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    value: str
    below: float | None = Field(None, description="Exclusive upper bound; omit on the last bucket.")

    @field_validator("value")
    @classmethod
    def _plain(cls, v: str) -> str:
        return Value._plain(v)


class Category(BaseModel):
    """One marker category."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(description="Tag name in the marker block.")
    kind: Literal["enum", "int", "float", "bucket"]
    description: str = ""
    values: list[Value] = Field(default_factory=list, description="Allowed values (enum only).")
    source: str | None = Field(None, description="Int category a bucket category is derived from.")
    buckets: list[Bucket] = Field(default_factory=list, description="Buckets (bucket only).")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError(f"category name {v!r} must be an identifier ([A-Za-z_][A-Za-z0-9_]*)")
        return v

    @model_validator(mode="after")
    def _shape(self) -> "Category":
        if self.kind == "enum":
            if not self.values:
                raise ValueError(f"enum category {self.name!r} has no values")
            seen: set[str] = set()
            for v in self.values:
                if v.value in seen:
                    raise ValueError(f"category {self.name!r} lists value {v.value!r} twice")
                seen.add(v.value)
        elif self.values:
            raise ValueError(f"{self.kind} category {self.name!r} cannot list values")
        if self.kind == "bucket":
            self._check_buckets()
        elif self.buckets or self.source:
            raise ValueError(f"only bucket categories take 'buckets'/'source' ({self.name!r})")
        return self

    def _check_buckets(self) -> None:
        if not self.source or len(self.buckets) < 2:
            raise ValueError(f"bucket category {self.name!r} needs a source and at least 2 buckets")
        bounds = [b.below for b in self.buckets]
        if bounds[-1] is not None or any(b is None for b in bounds[:-1]):
            raise ValueError(f"bucket category {self.name!r}: every bucket but the last needs 'below'")
        if any(not (a < b) for a, b in zip(bounds[:-2], bounds[1:-1])) or any(
            not math.isfinite(b) for b in bounds[:-1]
        ):
            raise ValueError(f"bucket category {self.name!r}: thresholds must be finite and increasing, got {bounds[:-1]}")
        names = [b.value for b in self.buckets]
        if len(set(names)) != len(names):
            raise ValueError(f"bucket category {self.name!r} repeats a bucket value: {names}")

    @property
    def allowed(self) -> list[str] | None:
        """Allowed string values, or None for open numeric categories."""
        if self.kind == "enum":
            return [v.value for v in self.values]
        if self.kind == "bucket":
            return [b.value for b in self.buckets]
        return None

    def bucket_of(self, x: float) -> str:
        """The bucket value for a source measurement `x` (bucket categories only)."""
        for b in self.buckets:
            if b.below is None or x < b.below:
                return b.value
        raise AssertionError("unreachable: last bucket has no bound")

    def validate_value(self, value: Any) -> str:
        """Return the canonical string for `value`, or raise ValueError naming what is allowed."""
        text = str(value).strip() if not isinstance(value, bool) else ""
        if self.kind in ("enum", "bucket"):
            if text in self.allowed:
                return text
            raise ValueError(f"{self.name}: {value!r} is not one of {self.allowed}")
        if self.kind == "int":
            if re.fullmatch(r"\d{1,9}", text):
                return str(int(text))
            raise ValueError(f"{self.name}: {value!r} is not a non-negative integer")
        try:
            number = float(text)
        except ValueError:
            raise ValueError(f"{self.name}: {value!r} is not a number") from None
        if not math.isfinite(number):
            raise ValueError(f"{self.name}: {value!r} is not a finite number")
        return format_float(number)


def format_float(x: float) -> str:
    """Canonical text for float markers: short enough for a prompt, stable across platforms."""
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:.0f}"


class Taxonomy(BaseModel):
    """A resolved taxonomy: the wrapper tag and the ordered categories."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    tag: str = Field("TEMPLATE", description="Wrapper tag of the marker block.")
    categories: list[Category]
    block: list[str] | None = Field(
        None,
        description="Categories written into the marker block, in this order (default: every category, in "
        "taxonomy order). The others are still annotated and kept with the data (e.g. as a bucket's source), "
        "but a model never reads or writes them. A short block matters for small models with short contexts.",
    )

    @field_validator("tag")
    @classmethod
    def _tag(cls, v: str) -> str:
        return Category._name(v)

    @model_validator(mode="after")
    def _consistent(self) -> "Taxonomy":
        if not self.categories:
            raise ValueError("a taxonomy needs at least one category")
        names = [c.name for c in self.categories]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"categories listed twice: {dupes}")
        if self.tag in names:
            raise ValueError(f"wrapper tag {self.tag!r} collides with a category name")
        by_name = {c.name: c for c in self.categories}
        for c in self.categories:
            if c.kind == "bucket" and (c.source not in by_name or by_name[c.source].kind != "int"):
                raise ValueError(f"bucket category {c.name!r}: source {c.source!r} must be an int category")
        if self.block is not None:
            unknown = [n for n in self.block if n not in by_name]
            twice = sorted({n for n in self.block if self.block.count(n) > 1})
            if unknown or twice or not self.block:
                raise ValueError(f"block must list known categories once each (unknown: {unknown}, repeated: {twice}, known: {names})")
        return self

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.categories]

    @property
    def block_names(self) -> list[str]:
        """The categories of the marker block, in block order."""
        return list(self.block) if self.block is not None else self.names

    def category(self, name: str) -> Category:
        for c in self.categories:
            if c.name == name:
                return c
        raise KeyError(f"unknown marker category {name!r}; known: {self.names}")

    @property
    def version(self) -> str:
        """Stable 12-hex hash of the resolved taxonomy (independent of file layout and comments)."""
        content = self.model_dump(mode="json")
        if content["block"] is None:
            del content["block"]  # taxonomies without a `block:` keep the hash they had before it existed
        blob = json.dumps(content, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def validate_markers(self, markers: dict[str, Any]) -> dict[str, str]:
        """Canonicalize a {category: value} mapping, in taxonomy order; ValueError on any bad entry."""
        unknown = [k for k in markers if k not in self.names]
        if unknown:
            raise ValueError(f"unknown marker categories {unknown}; known: {self.names}")
        return {c.name: c.validate_value(markers[c.name]) for c in self.categories if c.name in markers}

    def block_markers(self, markers: dict[str, Any]) -> dict[str, str]:
        """The markers a block carries: validated, restricted to `block_names`, in block order."""
        clean = self.validate_markers(markers)
        return {n: clean[n] for n in self.block_names if n in clean}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json", exclude_defaults=True), sort_keys=False, allow_unicode=True)


def _line_index(text: str) -> dict[tuple, int]:
    """Map YAML key paths (tuples of keys / list indices) to 1-based line numbers."""
    index: dict[tuple, int] = {}

    def walk(node: yaml.Node, path: tuple) -> None:
        index[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            for key, child in node.value:
                walk(child, path + (key.value,))
                index[path + (key.value,)] = key.start_mark.line + 1  # the key's line, not its value's
        elif isinstance(node, yaml.SequenceNode):
            for i, child in enumerate(node.value):
                walk(child, path + (i,))

    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return index
    if root is not None:
        walk(root, ())
    return index


def _duplicate_keys(text: str, source: str) -> None:
    """PyYAML silently keeps the last of two equal keys; a taxonomy must not."""

    def walk(node: yaml.Node) -> None:
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key, child in node.value:
                if key.value in seen:
                    raise TaxonomyError(f"{source}:{key.start_mark.line + 1}: key {key.value!r} appears twice")
                seen.add(key.value)
                walk(child)
        elif isinstance(node, yaml.SequenceNode):
            for child in node.value:
                walk(child)

    root = yaml.compose(text)
    if root is not None:
        walk(root)


def _resolve_path(ref: str, relative_to: Path | None) -> Path:
    if (BUILTIN_DIR / f"{ref}.yaml").exists() and "/" not in ref:
        return BUILTIN_DIR / f"{ref}.yaml"
    path = Path(ref)
    if not path.is_absolute() and relative_to is not None:
        path = relative_to / path
    if not path.exists():
        builtins = sorted(p.stem for p in BUILTIN_DIR.glob("*.yaml"))
        raise TaxonomyError(f"taxonomy {ref!r} not found (a path, or a builtin name: {builtins})")
    return path


def _read_raw(path: Path, depth: int = 0) -> tuple[dict, str]:
    """Read one file, merge it over its `extends:` parent; returns (raw dict, text for line lookup)."""
    if depth > 8:
        raise TaxonomyError(f"{path}: 'extends' chain is deeper than 8 (a cycle?)")
    text = path.read_text(encoding="utf-8")
    try:
        _duplicate_keys(text, str(path))
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise TaxonomyError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise TaxonomyError(f"{path}: top level must be a mapping with 'name', 'tag', 'categories'")
    parent_ref = raw.pop("extends", None)
    if parent_ref is None:
        return raw, text
    parent, _ = _read_raw(_resolve_path(str(parent_ref), path.parent), depth + 1)
    cats = list(parent.get("categories", []))
    for cat in raw.pop("categories", []) or []:
        names = [c.get("name") for c in cats]
        if isinstance(cat, dict) and cat.get("name") in names:
            cats[names.index(cat["name"])] = cat
        else:
            cats.append(cat)
    merged = {**parent, **raw, "categories": cats}
    merged.setdefault("name", path.stem)
    return merged, text


def load_taxonomy(ref: str | Path = "paper") -> Taxonomy:
    """Load a taxonomy from a builtin name (``paper``) or a YAML path, raising TaxonomyError."""
    path = _resolve_path(str(ref), None)
    raw, text = _read_raw(path)
    raw.setdefault("name", path.stem)
    try:
        return Taxonomy.model_validate(raw)
    except ValidationError as e:
        lines = _line_index(text)
        problems = []
        for err in e.errors():
            loc = tuple(err["loc"])
            # Walk up the path until a node with a known line is found.
            probe = loc
            while probe and probe not in lines:
                probe = probe[:-1]
            where = f"line {lines[probe]}" if probe in lines else "line ?"
            key = ".".join(str(p) for p in loc) or "(top level)"
            problems.append(f"{path}:{where}: {key}: {err['msg']}")
        raise TaxonomyError("invalid taxonomy\n  " + "\n  ".join(problems)) from None
