"""Marker dropout on the prompt side, drawn deterministically from (seed, example id, epoch).

The completion block is never dropped: seeing the full block as a target while the prompt block
is partly or wholly missing is what teaches the model to infer markers.

- dataset level: with probability `dataset_rate` the whole prompt block is removed;
- sample level: otherwise each marker is removed with probability `sample_rate`
  (or `category_rates[category]` where given).

Draws hash (seed, example id, epoch), so a resumed run repeats them exactly and each epoch
draws anew, with no state to checkpoint.

>>> cfg = DropoutConfig(dataset_rate=0.0, sample_rate=0.0)
>>> draw_prompt_markers({"task": "Rewrite", "domain": "Legal"}, "ex-1", epoch=0, seed=0, config=cfg)
{'task': 'Rewrite', 'domain': 'Legal'}
"""

from __future__ import annotations

import hashlib
import struct

from pydantic import BaseModel, ConfigDict, Field


class DropoutConfig(BaseModel):
    """Prompt-side marker dropout rates."""

    model_config = ConfigDict(extra="forbid")
    dataset_rate: float = Field(0.5, ge=0.0, le=1.0, description="Share of examples whose whole prompt block is dropped (paper: 0.5).")
    sample_rate: float = Field(0.5, ge=0.0, le=1.0, description="Per-marker drop probability for the other examples (paper: 0.5).")
    category_rates: dict[str, float] = Field(default_factory=dict, description="Per-category overrides of sample_rate.")

    def model_post_init(self, _context) -> None:
        bad = {k: v for k, v in self.category_rates.items() if not 0.0 <= v <= 1.0}
        if bad:
            raise ValueError(f"category_rates must lie in [0, 1]: {bad}")


def uniform(seed: int, example_id: str, epoch: int, salt: str) -> float:
    """A reproducible U[0, 1) number for one (seed, example, epoch, salt)."""
    digest = hashlib.blake2b(f"{seed}\x1f{example_id}\x1f{epoch}\x1f{salt}".encode(), digest_size=8).digest()
    return (struct.unpack("<Q", digest)[0] >> 11) / float(1 << 53)


def draw_prompt_markers(
    markers: dict[str, str], example_id: str, *, epoch: int, seed: int, config: DropoutConfig
) -> dict[str, str]:
    """The markers that stay in the prompt block for this example in this epoch (order kept)."""
    if uniform(seed, example_id, epoch, "dataset") < config.dataset_rate:
        return {}
    kept = {}
    for name, value in markers.items():
        rate = config.category_rates.get(name, config.sample_rate)
        if uniform(seed, example_id, epoch, f"sample:{name}") >= rate:
            kept[name] = value
    return kept
