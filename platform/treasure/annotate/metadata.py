"""Dataset-characteristics annotator: per-source metadata fields → markers, as declared in config.

A source's mapping gives constant markers (every row of the source) and field-value lookups:

>>> from treasure.annotate.config import SourceMapping
>>> m = {"arena-hard": SourceMapping(fields={"subcategory": {"math": {"domain": "Math"}}})}
>>> metadata_markers("arena-hard", '{"subcategory": "math"}', None, m)
{'domain': 'Math'}
>>> metadata_markers("alpaca-zh", "{}", "Chinese", m)
{'language': 'Chinese'}
"""

from __future__ import annotations

import json

from treasure.annotate.config import SourceMapping


def parse_metadata(raw: str | None) -> dict:
    """The row's metadata JSON object; ValueError if it is not one (the row becomes an error row)."""
    if raw is None or raw == "":
        return {}
    value = json.loads(raw)
    if not isinstance(value, dict):
        raise ValueError(f"metadata must be a JSON object, got {type(value).__name__}")
    return value


def metadata_markers(source: str, metadata: str | None, language: str | None, mapping: dict[str, SourceMapping]) -> dict[str, str]:
    """Markers the source's declared metadata gives this row (values not yet validated)."""
    out: dict[str, str] = {}
    if language:
        out["language"] = language
    spec = mapping.get(source)
    if spec is None:
        return out
    out.update(spec.markers)
    fields = parse_metadata(metadata)
    for field, table in spec.fields.items():
        value = fields.get(field)
        if value is not None and str(value) in table:
            out.update(table[str(value)])
    return out
