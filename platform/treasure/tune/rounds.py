"""Splitting one training run into rounds a scheduler can watch (pure, no Ray).

A trial trains its model in `rounds` equal chunks of the base config's ``max_steps``; after each
chunk it evaluates cheaply and reports, so ASHA can stop a bad trial before it has spent its whole
budget. Round 1 trains from the base config; round r > 1 continues from round r-1's published
checkpoint (``model.kind: hf``, ``model.path``: that folder).

The learning rate follows the base run's schedule piecewise: round r covers global steps
[a, b); it starts at the global LR of step a and decays by a cosine to the global LR of step b
(``lr_multiplier`` of treasure.train.loop), warm-up only in round 1. The optimizer moments restart
each round. Each round starts its dropout draws and batch order at epoch 0, so round r > 1 shifts
the train seed by r - 1 to draw fresh dropout and a new order instead of replaying round 1's
first batches (see docs/tuning.md for what a train-side resume hook would make exact).

>>> [round_plan(100, 2, r, warmup_steps=10, min_lr_ratio=0.1)["max_steps"] for r in (1, 2)]
[50, 50]
>>> round(round_plan(100, 2, 2, warmup_steps=10, min_lr_ratio=0.1)["lr_scale"], 3)
0.628
"""

from __future__ import annotations

import copy
import math

from treasure.train.loop import lr_multiplier


def round_bounds(total_steps: int, rounds: int, r: int) -> tuple[int, int]:
    """Global steps [a, b) trained in round r (1-based); the rounds cover [0, total_steps) exactly."""
    if not 1 <= r <= rounds:
        raise ValueError(f"round {r} outside 1..{rounds}")
    if rounds > total_steps:
        raise ValueError(f"rounds ({rounds}) > max_steps ({total_steps}): each round needs at least one step")
    return (total_steps * (r - 1)) // rounds, (total_steps * r) // rounds


def round_plan(total_steps: int, rounds: int, r: int, *, warmup_steps: int, min_lr_ratio: float) -> dict:
    """What round r changes in the train config: steps, LR scale at its start, warm-up, decay floor."""
    a, b = round_bounds(total_steps, rounds, r)
    if r == 1:
        # Round 1 keeps the base warm-up and decays to where the global schedule is at step b.
        end = lr_multiplier(b - 1, warmup_steps=warmup_steps, max_steps=total_steps, min_lr_ratio=min_lr_ratio)
        return {"max_steps": b - a, "lr_scale": 1.0, "warmup_steps": min(warmup_steps, b - a), "min_lr_ratio": end}
    start = lr_multiplier(a, warmup_steps=warmup_steps, max_steps=total_steps, min_lr_ratio=min_lr_ratio)
    end = lr_multiplier(b - 1, warmup_steps=warmup_steps, max_steps=total_steps, min_lr_ratio=min_lr_ratio)
    return {"max_steps": b - a, "lr_scale": start, "warmup_steps": 0, "min_lr_ratio": min(1.0, end / start) if start > 0 else 0.0}


def round_train_config(train: dict, rounds: int, r: int, *, output: str, previous_output: str | None) -> dict:
    """The train-config dict of round r (from the trial's full train config `train`)."""
    if (r == 1) != (previous_output is None):
        raise ValueError("round 1 starts from the base model; every later round needs the previous round's output")
    plan = round_plan(train["max_steps"], rounds, r, warmup_steps=train["warmup_steps"], min_lr_ratio=train["min_lr_ratio"])
    cfg = copy.deepcopy(train)
    cfg.update(output=output, max_steps=plan["max_steps"], warmup_steps=plan["warmup_steps"],
               min_lr_ratio=round(plan["min_lr_ratio"], 6), learning_rate=train["learning_rate"] * plan["lr_scale"])
    cfg["checkpoint_every"] = min(cfg.get("checkpoint_every", plan["max_steps"]), plan["max_steps"])
    if r > 1:
        cfg["model"] = {"kind": "hf", "path": previous_output}
        cfg["seed"] = train["seed"] + (r - 1)
    if not math.isfinite(cfg["learning_rate"]) or cfg["learning_rate"] <= 0:
        raise ValueError(f"round {r}: learning rate {cfg['learning_rate']} is not positive")
    return cfg
