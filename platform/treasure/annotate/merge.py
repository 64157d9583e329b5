"""Merging candidate markers from several annotators: precedence per category, with provenance.

Each annotator proposes `Candidate`s; for each category the candidate from the source that comes
first in the configured precedence wins. A candidate with `value=None` is an outcome without a
marker (a tagger answer that was off the list, a row over the tagger's cap): it never puts a
value into `markers`, but its provenance is kept when no other source set the category.

>>> merge([Candidate("domain", "Code", prov("llm")), Candidate("domain", "Math", prov("metadata"))],
...       {"default": ["metadata", "llm"]})[0]
{'domain': 'Math'}
"""

from __future__ import annotations

from dataclasses import dataclass


def prov(by: str, model: str | None = None, version: str | None = None, confidence: float | None = None,
         raw: str | None = None, note: str | None = None) -> dict:
    """One provenance record (docs/data-formats.md); `note` says why a category has no value."""
    out = {"by": by, "model": model, "version": version, "confidence": confidence, "raw": raw}
    if note is not None:
        out["note"] = note
    return out


@dataclass(frozen=True)
class Candidate:
    category: str
    value: str | None
    provenance: dict


def merge(candidates: list[Candidate], precedence: dict[str, list[str]], taxonomy=None) -> tuple[dict[str, str], dict[str, dict]]:
    """(markers, provenance). With a taxonomy, markers are validated and in taxonomy order.

    A candidate whose value the taxonomy rejects raises ValueError (the row becomes an error row):
    every annotator must map its own output onto allowed values before it gets here.
    """
    best: dict[str, tuple[int, Candidate]] = {}
    for c in candidates:
        order = precedence.get(c.category, precedence["default"])
        by = c.provenance["by"]
        if by not in order:
            continue
        # A value beats a no-value outcome whatever its rank: "unspecified" must not mask a real marker.
        rank = order.index(by) + (0 if c.value is not None else len(order))
        if c.category not in best or rank < best[c.category][0]:
            best[c.category] = (rank, c)
    markers = {k: c.value for k, (_, c) in best.items() if c.value is not None}
    provenance = {k: c.provenance for k, (_, c) in best.items()}
    if taxonomy is not None:
        markers = taxonomy.validate_markers(markers)
        provenance = {k: provenance[k] for k in taxonomy.names if k in provenance}
    return markers, provenance
