"""The evaluation report: metrics.json, report.md (tables) and PNG plots, written to a local folder.

Plots: violation rate by length-control condition, inference accuracy by category, and head vs
tail (inference accuracy and adherence per band). Every figure carries its 95% interval.
"""

from __future__ import annotations

import json
import math
from pathlib import Path


def _pct(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def _rate_cell(r: dict) -> str:
    return f"{_pct(r['rate'])} [{_pct(r['low'])}, {_pct(r['high'])}] (n={r['n']})"


def _win_cell(w: dict) -> str:
    return (f"{_pct(w['win_rate'])} [{_pct(w['low'])}, {_pct(w['high'])}] "
            f"(W/T/L {w['wins']}/{w['ties']}/{w['losses']}, failed {w['failed']})")


def markdown(m: dict) -> str:
    """The Markdown report for a metrics dict (as written to metrics.json)."""
    lines = [f"# Evaluation: {m['models']['marked']} vs {m['models']['baseline']}", "",
             f"Held-out examples: {m['data']['heldout_rows']} of {m['data']['rows']} (annotated `{m['data']['input']}`), "
             f"{m['data']['heldout_used']} short enough to use; {m['prompt_too_long']['examples']} dropped as longer than the context; "
             f"taxonomy `{m['taxonomy_version']}`; judge `{m['judge']}`. Intervals are 95% (Wilson for rates, bootstrap for win rates).", ""]
    lc = m.get("length_control")
    if lc:
        lines += ["## Length-instruction control", "", f"Prompts: {lc.get('selection', 'any held-out prompt')}.", "", "| condition | violation rate | truncated | mean words |", "|---|---|---|---|"]
        for cond, r in lc["conditions"].items():
            lines.append(f"| {cond} | {_rate_cell(r)} | {r['truncated']} | {r['mean_words']:.1f} |")
        lines += ["", "| limit N | " + " | ".join(lc["conditions"]) + " |", "|---" * (len(lc["conditions"]) + 1) + "|"]
        for n, per in lc["by_limit"].items():
            lines.append(f"| {n} | " + " | ".join(_rate_cell(per[c]) if c in per else "" for c in lc["conditions"]) + " |")
        lines.append("")
    inf = m.get("inference")
    if inf:
        lines += ["## Marker inference (marked model, no markers given)", "", f"Well-formed block: {_rate_cell(inf['block_ok'])}", "",
                  "| category | accuracy | head | tail |", "|---|---|---|---|"]
        for cat, r in inf["categories"].items():
            b = inf["bands"].get(cat, {})
            lines.append(f"| {cat} | {_rate_cell(r)} | {_rate_cell(b['head']) if 'head' in b else ''} | {_rate_cell(b['tail']) if 'tail' in b else ''} |")
        lines.append("")
    adh = m.get("adherence")
    if adh:
        lines += ["## Control adherence (one marker fixed, answer re-annotated)", "", "| category | value | adherence |", "|---|---|---|"]
        for cat, per in adh["values"].items():
            lines.append(f"| **{cat}** | all | {_rate_cell(adh['categories'][cat])} |")
            lines += [f"| {cat} | {v} | {_rate_cell(r)} |" for v, r in per.items()]
        lines.append("")
    wr = m.get("win_rates")
    if wr:
        lines += ["## Win rate against the baseline", "", "| comparison | win rate | domain head | domain tail |", "|---|---|---|---|"]
        for name, w in wr.items():
            b = w["bands"].get("domain", {})
            lines.append(f"| {name} | {_win_cell(w['overall'])} | {_win_cell(b['head']) if 'head' in b else ''} | {_win_cell(b['tail']) if 'tail' in b else ''} |")
        lines.append("")
    lines += ["## Plots", "", "![violation](violation_by_condition.png) ![accuracy](accuracy_by_category.png) ![bands](head_vs_tail.png)", ""]
    return "\n".join(lines)


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
    """The headline numbers as MLflow metrics (names are the JSON paths with dots)."""
    out: dict[str, float] = {}
    for cond, r in m.get("length_control", {}).get("conditions", {}).items():
        out[f"length_control.{cond}.violation_rate"] = r["rate"]
    inf = m.get("inference", {})
    if inf:
        out["inference.block_ok"] = inf["block_ok"]["rate"]
    for cat, r in inf.get("categories", {}).items():
        out[f"inference.{cat}.accuracy"] = r["rate"]
    for cat, r in m.get("adherence", {}).get("categories", {}).items():
        out[f"adherence.{cat}.rate"] = r["rate"]
    for name, w in m.get("win_rates", {}).items():
        out[f"win_rate.{name}"] = w["overall"]["win_rate"]
        out[f"win_rate.{name}.failed"] = w["overall"]["failed"]
    return {k: float(v) for k, v in out.items() if v is not None and not (isinstance(v, float) and math.isnan(v))}
