"""The held-out split shared by training (which must skip these rows) and evaluation (which uses only them).

An example is held out when a reproducible uniform draw from (seed, id) falls under `fraction`;
the draw is `treasure.dropout.uniform(seed, id, 0, "heldout")`, so the split needs no stored list,
does not depend on row order or partitioning, and is stable when rows are added.

>>> is_heldout("ex-1", seed=0, fraction=0.0)
False
>>> is_heldout("ex-1", seed=0, fraction=1.0)
True
"""

from __future__ import annotations

from treasure.dropout import uniform


def is_heldout(example_id: str, seed: int, fraction: float) -> bool:
    """True when `example_id` belongs to the held-out split of (seed, fraction)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"heldout fraction must lie in [0, 1], got {fraction}")
    return uniform(seed, example_id, 0, "heldout") < fraction
