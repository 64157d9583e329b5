"""The held-out split shared by training (which must skip these rows) and evaluation (which uses only them).

An example is held out when a reproducible uniform draw from (seed, group) falls under `fraction`;
its group is its id, or for a derived row (``<parent id>#<variant>``, treasure.corpus.length_variants)
its parent's id, so a variant is held out exactly when its parent is. Evaluation never uses derived
rows (`is_derived`): a held-out prompt is never one the model was trained on.
the draw is `treasure.dropout.uniform(seed, id, 0, "heldout")`, so the split needs no stored list,
does not depend on row order or partitioning, and is stable when rows are added.

>>> is_heldout("ex-1", seed=0, fraction=0.0)
False
>>> is_heldout("ex-1", seed=0, fraction=1.0)
True
>>> is_heldout("ex-1#len40", seed=3, fraction=0.5) == is_heldout("ex-1", seed=3, fraction=0.5), is_derived("ex-1#len40")
(True, True)
"""

from __future__ import annotations

from treasure.dropout import uniform


DERIVED_SEP = "#"  # never occurs in a normalized id (<source>:<hex>)


def group_of(example_id: str) -> str:
    """The id whose draw decides the split: the parent's for a derived row."""
    return example_id.split(DERIVED_SEP, 1)[0]


def is_derived(example_id: str) -> bool:
    return DERIVED_SEP in example_id


def is_heldout(example_id: str, seed: int, fraction: float) -> bool:
    """True when `example_id` belongs to the held-out split of (seed, fraction)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"heldout fraction must lie in [0, 1], got {fraction}")
    return uniform(seed, group_of(example_id), 0, "heldout") < fraction
