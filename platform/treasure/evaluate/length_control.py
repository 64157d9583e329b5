"""Length-instruction control (AlpacaEval-LI style): up to four conditions, violation rate per condition.

    baseline_instruction  baseline model, "Answer in at most N words." appended
    marked_instruction    marked model, same instruction, no markers (it infers its own)
    marked_marker         marked model, instruction removed, the length marker fixed; with
                          `prefill` (evaluate.prefill, default) the marker also opens the model's
                          own block, as serving sends it (treasure.template.render_request)
    marked_marker_copy    marked model, the same marker in the prompt only (no prefill): the model
                          must copy it into its block itself, the paper's behaviour. Switched by
                          length_control.copy_condition; left out without prefill, where
                          marked_marker is this very condition.

Measuring both marker conditions in one run on the same prompts separates what the prefill buys
from what the model learned. With `length_marker: length_bucket` the limits are the upper bounds
of the bounded buckets (bucket value v ↔ "under `below` words", so N = below - 1) and the fixed
value is that bucket; with `length_tokens` the fixed value is N itself. An answer violates when
its word count (counted exactly as annotation counts length_tokens) exceeds N.
"""

from __future__ import annotations

from treasure.evaluate import metrics
from treasure.evaluate.config import LengthControlConfig
from treasure.evaluate.examples import AnnotatedRow
from treasure.taxonomy import Taxonomy
from treasure.template import render_request

CONDITIONS = ("baseline_instruction", "marked_instruction", "marked_marker", "marked_marker_copy")


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


def eligible(examples: list[AnnotatedRow], config: LengthControlConfig, taxonomy: Taxonomy) -> list[AnnotatedRow]:
    """The held-out examples length control may draw from (see `prompts_over_limit`)."""
    if not config.prompts_over_limit:
        return list(examples)
    smallest = min(n for n, _ in limits(config, taxonomy))
    picked = [ex for ex in examples if int(ex.markers.get("length_tokens", 0)) > smallest]
    if examples and not picked:
        raise ValueError(f"length_control: no held-out prompt has a reference answer longer than {smallest} words "
                         "(annotated length_tokens); set length_control.prompts_over_limit: false, or prompts: 0")
    return picked


def requests(examples: list[AnnotatedRow], config: LengthControlConfig, taxonomy: Taxonomy, *, prefill: bool = True) -> dict[str, list[dict]]:
    """{"baseline": rows, "marked": rows}: one row per (example, condition), each with its `user_turn` and `prefix`."""
    pairs = limits(config, taxonomy)
    base, marked = [], []
    for i, ex in enumerate(examples):
        n, value = pairs[i % len(pairs)]
        plain, no_prefix = render_request(ex.prompt, {}, taxonomy)
        instructed = {"user_turn": f"{plain} {config.instruction.format(n=n)}", "prefix": no_prefix}
        common = {"example_id": ex.id, "prompt": ex.prompt, "limit": n, "language": ex.markers.get("language", "")}
        base.append(_row(common, "baseline_instruction", instructed))
        marked.append(_row(common, "marked_instruction", instructed))
        fixed = {config.length_marker: value}
        marked.append(_row(common, "marked_marker", _request(ex.prompt, fixed, taxonomy, prefill)))
        if config.copy_condition and prefill:
            marked.append(_row(common, "marked_marker_copy", _request(ex.prompt, fixed, taxonomy, False)))
    return {"baseline": base, "marked": marked}


def _request(prompt: str, markers: dict, taxonomy: Taxonomy, prefill: bool) -> dict:
    user_turn, prefix = render_request(prompt, markers, taxonomy, prefill=prefill)
    return {"user_turn": user_turn, "prefix": prefix}


def _row(common: dict, condition: str, request: dict) -> dict:
    return {**common, "request_id": f"lc:{common['example_id']}:{condition}", "condition": condition, **request}


def score(rows: list[dict]) -> dict:
    """Violation rate (Wilson 95%), mean words and prefilled rows per condition, and rates per (condition, limit); rows carry `words`."""
    out: dict = {"conditions": {}, "by_limit": {}}
    for cond in CONDITIONS:
        sel = [r for r in rows if r["condition"] == cond]
        if not sel:
            continue
        rate = metrics.violation_rate([r["words"] for r in sel], [r["limit"] for r in sel])
        out["conditions"][cond] = {**rate.as_dict(), "truncated": sum(r["finish_reason"] != "stop" for r in sel),
                                   "mean_words": sum(r["words"] for r in sel) / len(sel),
                                   "prefilled": sum(bool(r.get("prefix")) for r in sel)}
        for n in sorted({r["limit"] for r in sel}):
            sub = [r for r in sel if r["limit"] == n]
            out["by_limit"].setdefault(str(n), {})[cond] = metrics.violation_rate([r["words"] for r in sub], n).as_dict()
    return out


def non_violating_pairs(rows: list[dict], condition: str) -> list[tuple[dict, dict]]:
    """(condition row, baseline row) for the same example where neither answer violates its limit."""
    base = {r["example_id"]: r for r in rows if r["condition"] == "baseline_instruction"}
    return [(r, base[r["example_id"]]) for r in rows if r["condition"] == condition and r["example_id"] in base
            and r["words"] <= r["limit"] and base[r["example_id"]]["words"] <= r["limit"]]
