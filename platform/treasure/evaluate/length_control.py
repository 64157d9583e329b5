"""Length-instruction control (AlpacaEval-LI style): three conditions, violation rate per condition.

    baseline_instruction  baseline model, "Answer in at most N words." appended
    marked_instruction    marked model, same instruction, no markers (it infers its own)
    marked_marker         marked model, instruction removed, the length marker fixed

With `length_marker: length_bucket` the limits are the upper bounds of the bounded buckets
(bucket value v ↔ "under `below` words", so N = below - 1) and the fixed value is that bucket;
with `length_tokens` the fixed value is N itself. An answer violates when its word count (counted
exactly as annotation counts length_tokens) exceeds N.
"""

from __future__ import annotations

from treasure.evaluate import metrics
from treasure.evaluate.config import LengthControlConfig
from treasure.evaluate.examples import Example
from treasure.taxonomy import Taxonomy
from treasure.template import render_prompt

CONDITIONS = ("baseline_instruction", "marked_instruction", "marked_marker")


def limits(config: LengthControlConfig, taxonomy: Taxonomy) -> list[tuple[int, str]]:
    """[(N, fixed marker value)] cycled over prompts."""
    if config.length_marker == "length_tokens":
        if not config.limits:
            raise ValueError("length_control.limits is required with length_marker: length_tokens")
        return [(n, str(n)) for n in config.limits]
    if config.limits:
        raise ValueError("with length_marker: length_bucket the limits are the buckets' bounds; leave length_control.limits empty")
    cat = taxonomy.category("length_bucket")
    bounded = [(int(b.below) - 1, b.value) for b in cat.buckets if b.below is not None]
    unknown = set(config.bucket_values) - {v for _, v in bounded}
    if unknown:
        raise ValueError(f"length_control.bucket_values {sorted(unknown)} are not bounded buckets of length_bucket: {[v for _, v in bounded]}")
    return [(n, v) for n, v in bounded if not config.bucket_values or v in config.bucket_values]


def eligible(examples: list[Example], config: LengthControlConfig, taxonomy: Taxonomy) -> list[Example]:
    """The held-out examples length control may draw from (see `prompts_over_limit`)."""
    if not config.prompts_over_limit:
        return list(examples)
    smallest = min(n for n, _ in limits(config, taxonomy))
    picked = [ex for ex in examples if int(ex.markers.get("length_tokens", 0)) > smallest]
    if examples and not picked:
        raise ValueError(f"length_control: no held-out prompt has a reference answer longer than {smallest} words "
                         "(annotated length_tokens); set length_control.prompts_over_limit: false, or prompts: 0")
    return picked


def requests(examples: list[Example], config: LengthControlConfig, taxonomy: Taxonomy) -> dict[str, list[dict]]:
    """{"baseline": rows, "marked": rows}: one row per (example, condition)."""
    pairs = limits(config, taxonomy)
    base, marked = [], []
    for i, ex in enumerate(examples):
        n, value = pairs[i % len(pairs)]
        instructed = f"{render_prompt(ex.prompt, {}, taxonomy)} {config.instruction.format(n=n)}"
        common = {"example_id": ex.id, "prompt": ex.prompt, "limit": n, "language": ex.markers.get("language", "")}
        base.append({**common, "request_id": f"lc:{ex.id}:baseline_instruction", "condition": "baseline_instruction", "user_turn": instructed})
        marked.append({**common, "request_id": f"lc:{ex.id}:marked_instruction", "condition": "marked_instruction", "user_turn": instructed})
        marked.append({**common, "request_id": f"lc:{ex.id}:marked_marker", "condition": "marked_marker",
                       "user_turn": render_prompt(ex.prompt, {config.length_marker: value}, taxonomy)})
    return {"baseline": base, "marked": marked}


def score(rows: list[dict]) -> dict:
    """Violation rate (Wilson 95%) per condition and per (condition, limit); rows carry `words`."""
    out: dict = {"conditions": {}, "by_limit": {}}
    for cond in CONDITIONS:
        sel = [r for r in rows if r["condition"] == cond]
        if not sel:
            continue
        rate = metrics.violation_rate([r["words"] for r in sel], [r["limit"] for r in sel])
        out["conditions"][cond] = {**rate.as_dict(), "truncated": sum(r["finish_reason"] != "stop" for r in sel),
                                   "mean_words": sum(r["words"] for r in sel) / len(sel)}
        for n in sorted({r["limit"] for r in sel}):
            sub = [r for r in sel if r["limit"] == n]
            out["by_limit"].setdefault(str(n), {})[cond] = metrics.violation_rate([r["words"] for r in sub], n).as_dict()
    return out


def non_violating_pairs(rows: list[dict], condition: str) -> list[tuple[dict, dict]]:
    """(condition row, baseline row) for the same example where neither answer violates its limit."""
    base = {r["example_id"]: r for r in rows if r["condition"] == "baseline_instruction"}
    return [(r, base[r["example_id"]]) for r in rows if r["condition"] == condition and r["example_id"] in base
            and r["words"] <= r["limit"] and base[r["example_id"]]["words"] <= r["limit"]]
