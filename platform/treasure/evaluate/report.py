"""The evaluation report: metrics.json, report.md (tables) and PNG plots, written to a local folder.

Plots: violation rate by length-control condition (all four), inference accuracy by category, and
head vs tail (inference accuracy and adherence per band). Every figure carries its 95% interval.
Win rates appear only when a judge measured them; otherwise the report says "not measured" and
why, and no `win_rate.*` metric exists.
"""

from __future__ import annotations

import json
import math
from pathlib import Path


def _pct(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def _rate_cell(r: dict) -> str:
    return f"{_pct(r['rate'])} [{_pct(r['low'])}, {_pct(r['high'])}] (n={r['n']})"


def _interval_cell(r: dict) -> str:
    return f"{_pct(r['rate'])} [{_pct(r['low'])}, {_pct(r['high'])}]"


def _prefill_cell(r: dict) -> str:
    """yes / no / k of n: whether the condition's requests opened the model's block with the markers."""
    k, n = r.get("prefilled"), r["n"]
    if k is None:
        return ""
    return "yes" if n and k == n else "no" if k == 0 else f"{k} of {n}"


def _win_cell(w: dict) -> str:
    return (f"{_pct(w['win_rate'])} [{_pct(w['low'])}, {_pct(w['high'])}] "
            f"(W/T/L {w['wins']}/{w['ties']}/{w['losses']}, failed {w['failed']})")


def markdown(m: dict) -> str:
    """The Markdown report for a metrics dict (as written to metrics.json)."""
    prefill = {True: "requested markers prefilled into the model's block", False: "copy-only (markers in the prompt only)"}.get(m.get("prefill"))
    lines = [f"# Evaluation: {m['models']['marked']} vs {m['models']['baseline']}", "",
             f"Held-out examples: {m['data']['heldout_rows']} of {m['data']['rows']} (annotated `{m['data']['input']}`), "
             f"{m['data']['heldout_used']} short enough to use; {m['prompt_too_long']['examples']} dropped as longer than the context; "
             f"taxonomy `{m['taxonomy_version']}`; judge `{m['judge']}`" + (f"; {prefill}" if prefill else "") +
             ". Intervals are 95% (Wilson for rates, bootstrap for win rates).", ""]
    lines += _length_control_section(m.get("length_control"))
    inf = m.get("inference")
    if inf:
        lines += ["## Marker inference (marked model, no markers given)", "", f"Well-formed block: {_rate_cell(inf['block_ok'])}", "",
                  "| category | accuracy | majority class (its rate on the same rows) | head | tail |", "|---|---|---|---|---|"]
        for cat, r in inf["categories"].items():
            b = inf["bands"].get(cat, {})
            maj = inf.get("majority", {}).get(cat)
            maj_cell = f"{maj['value']}: {_rate_cell(maj)}" if maj else ""
            lines.append(f"| {cat} | {_rate_cell(r)} | {maj_cell} | {_rate_cell(b['head']) if 'head' in b else ''} | {_rate_cell(b['tail']) if 'tail' in b else ''} |")
        lines.append("")
    lines += _adherence_section(m.get("adherence"))
    lines += _win_rate_section(m)
    lines += ["## Plots", "", "![violation](violation_by_condition.png) ![accuracy](accuracy_by_category.png) ![bands](head_vs_tail.png)", ""]
    return "\n".join(lines)


def _length_control_section(lc: dict | None) -> list[str]:
    if not lc:
        return []
    lines = ["## Length-instruction control", "", f"Prompts: {lc.get('selection', 'any held-out prompt')}.", "",
             "| condition | prefill | violation rate [95%] | n | truncated | mean words |", "|---|---|---|---|---|---|"]
    for cond, r in lc["conditions"].items():
        lines.append(f"| {cond} | {_prefill_cell(r)} | {_interval_cell(r)} | {r['n']} | {r['truncated']} | {r['mean_words']:.1f} |")
    lines += ["", "| limit N | " + " | ".join(lc["conditions"]) + " |", "|---" * (len(lc["conditions"]) + 1) + "|"]
    for n, per in lc["by_limit"].items():
        lines.append(f"| {n} | " + " | ".join(_rate_cell(per[c]) if c in per else "" for c in lc["conditions"]) + " |")
    return lines + [""]


def _adherence_section(adh: dict | None) -> list[str]:
    if not adh:
        return []
    lines = ["## Control adherence (one marker fixed, answer re-annotated)", "", "| category | value | adherence |", "|---|---|---|"]
    for cat, per in adh["values"].items():
        lines.append(f"| **{cat}** | all | {_rate_cell(adh['categories'][cat])} |")
        lines += [f"| {cat} | {v} | {_rate_cell(r)} |" for v, r in per.items()]
    lines.append("")
    for cat, per in adh["values"].items():
        if not any("mean_words" in r for r in per.values()):
            continue
        lines += [f"### {cat} adherence per value", ""]
        if cat == "length_bucket" and adh.get("length_bucket_selection"):
            lines += [f"Prompts: {adh['length_bucket_selection']}.", ""]
        lines += ["| value | adherence [95%] | n | mean words |", "|---|---|---|---|"]
        lines += [f"| {v} | {_interval_cell(r)} | {r['n']} | {r['mean_words']:.1f} |" for v, r in per.items()]
        sep = adh.get("length_separation", {}).get(cat)
        lines += ["", separation_line(sep)] if sep else []
        lines.append("")
    return lines


def separation_line(sep: dict) -> str:
    """One sentence on whether mean words grow with the requested bucket (adherence.length_separation).

    >>> separation_line({"order": ["concise", "long"], "monotonic": True, "long_over_concise": 3.5, "min_ratio": 3.0, "passed": True})
    'Mean words strictly increasing (concise < long): yes; long / concise = 3.50x (needs >= 3x): check passed.'
    """
    order = " < ".join(sep["order"])
    if sep["monotonic"] is None:
        return f"Mean words by bucket ({order}): not measured (a bucket has no answers)."
    ratio = sep["long_over_concise"]
    ratio_text = f"{ratio:.2f}x" if ratio is not None else "unbounded (the smallest bucket's answers are empty)"
    return (f"Mean words strictly increasing ({order}): {'yes' if sep['monotonic'] else 'no'}; "
            f"{sep['order'][-1]} / {sep['order'][0]} = {ratio_text} (needs >= {sep['min_ratio']:g}x): "
            f"check {'passed' if sep['passed'] else 'failed'}.")


def _win_rate_section(m: dict) -> list[str]:
    wr = m.get("win_rates")
    if not wr:
        reason = m.get("win_rates_not_measured", "these metrics hold no win rates")
        return ["## Win rate against the baseline", "", f"Not measured: {reason}.", ""]
    lines = ["## Win rate against the baseline", "", "| comparison | win rate | domain head | domain tail |", "|---|---|---|---|"]
    for name, w in wr.items():
        b = w["bands"].get("domain", {})
        lines.append(f"| {name} | {_win_cell(w['overall'])} | {_win_cell(b['head']) if 'head' in b else ''} | {_win_cell(b['tail']) if 'tail' in b else ''} |")
    return lines + [""]


def _bar(ax, labels, rates, title):
    vals = [0 if math.isnan(r["rate"]) else r["rate"] for r in rates]
    err = [[max(0, v - (r["low"] if not math.isnan(r["low"]) else v)) for v, r in zip(vals, rates)],
           [max(0, (r["high"] if not math.isnan(r["high"]) else v) - v) for v, r in zip(vals, rates)]]
    ax.bar(labels, vals, yerr=err, capsize=4, color="#4C72B0")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.tick_params(axis="x", rotation=30)


def plots(m: dict, folder: Path) -> list[Path]:
    """The three PNGs; a section without data gives an empty plot titled so."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    specs = [
        ("violation_by_condition.png", "Length-limit violation rate", m.get("length_control", {}).get("conditions", {})),
        ("accuracy_by_category.png", "Marker inference accuracy", m.get("inference", {}).get("categories", {})),
    ]
    for name, title, rates in specs:
        fig, ax = plt.subplots(figsize=(6, 4))
        _bar(ax, list(rates), list(rates.values()), title if rates else f"{title} (not measured)")
        fig.tight_layout()
        fig.savefig(folder / name, dpi=100)
        plt.close(fig)
        out.append(folder / name)
    fig, ax = plt.subplots(figsize=(7, 4))
    labels, rates = [], []
    for section in ("inference", "adherence"):
        for cat, per in m.get(section, {}).get("bands", {}).items():
            for band in ("head", "tail"):
                if band in per:
                    labels.append(f"{section[:3]}:{cat}:{band}")
                    rates.append(per[band])
    _bar(ax, labels, rates, "Head vs tail (inference accuracy, adherence)" if rates else "Head vs tail (not measured)")
    fig.tight_layout()
    fig.savefig(folder / "head_vs_tail.png", dpi=100)
    plt.close(fig)
    out.append(folder / "head_vs_tail.png")
    return out


def write(m: dict, folder: Path) -> list[Path]:
    """metrics.json, report.md and the plots into `folder`; returns the files."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps(m, indent=2, sort_keys=True, default=str))
    (folder / "report.md").write_text(markdown(m))
    return [folder / "metrics.json", folder / "report.md", *plots(m, folder)]


def flat_metrics(m: dict) -> dict[str, float]:
    """The headline numbers as MLflow metrics (names are the JSON paths with dots; booleans as 1/0).

    Win rates that were not measured have no metric at all (never a 0 or a NaN that reads as one).
    """
    out: dict[str, float] = {}
    for cond, r in m.get("length_control", {}).get("conditions", {}).items():
        out[f"length_control.{cond}.violation_rate"] = r["rate"]
        out[f"length_control.{cond}.mean_words"] = r["mean_words"]
        out[f"length_control.{cond}.n"] = r["n"]
    inf = m.get("inference", {})
    if inf:
        out["inference.block_ok"] = inf["block_ok"]["rate"]
    for cat, r in inf.get("categories", {}).items():
        out[f"inference.{cat}.accuracy"] = r["rate"]
    for cat, r in inf.get("majority", {}).items():
        out[f"inference.{cat}.majority_rate"] = r["rate"]
    adh = m.get("adherence", {})
    for cat, r in adh.get("categories", {}).items():
        out[f"adherence.{cat}.rate"] = r["rate"]
    for cat, per in adh.get("values", {}).items():
        for value, r in per.items():
            if "mean_words" in r:  # length categories: every value's adherence and answer length
                out.update({f"adherence.{cat}.{value}.rate": r["rate"], f"adherence.{cat}.{value}.n": r["n"],
                            f"adherence.{cat}.{value}.mean_words": r["mean_words"]})
    for cat, sep in adh.get("length_separation", {}).items():
        out.update({f"adherence.{cat}.monotonic": sep["monotonic"], f"adherence.{cat}.long_over_concise": sep["long_over_concise"],
                    f"adherence.{cat}.length_check_passed": sep["passed"]})
    for name, w in m.get("win_rates", {}).items():
        out[f"win_rate.{name}"] = w["overall"]["win_rate"]
        out[f"win_rate.{name}.failed"] = w["overall"]["failed"]
    return {k: float(v) for k, v in out.items() if v is not None and not (isinstance(v, float) and math.isnan(v))}
