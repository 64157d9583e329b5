"""Marker report: distribution per category and value, with head/tail bands, as JSON, Markdown, PNG.

Enum and bucket categories are counted per value (share of all annotated rows; a value under
`tail_share` of rows is in the tail band). Numeric categories get summary statistics. With the distilled
tagger, `tagger_summary` adds per category who set the value (teacher or student), the share left
Unspecified, the student's held-out agreement and its hand-set accuracy.

>>> from treasure.taxonomy import load_taxonomy
>>> r = marker_report([{"domain": "Code"}] * 19 + [{"domain": "Math"}], load_taxonomy("paper"), 0.1)
>>> [(v["value"], v["band"]) for v in r["categories"]["domain"]["values"]]
[('Code', 'head'), ('Math', 'tail')]
"""

from __future__ import annotations

import io
from collections import Counter

import numpy as np


def by_source(markers: list[dict], sources: list[str], category: str, order: list[str] | None = None) -> dict[str, dict]:
    """{source: {"rows": n, "values": {value: count}}} for one category: whether a prompt's source already
    predicts the value (then the marker teaches the model nothing the prompt does not say).

    >>> by_source([{"length_bucket": "long"}, {"length_bucket": "concise"}], ["a", "a"], "length_bucket")
    {'a': {'rows': 2, 'values': {'concise': 1, 'long': 1}}}
    """
    out: dict[str, dict] = {}
    for m, src in zip(markers, sources, strict=True):
        entry = out.setdefault(src, {"rows": 0, "values": Counter()})
        entry["rows"] += 1
        if category in m:
            entry["values"][m[category]] += 1
    rank = {v: i for i, v in enumerate(order or [])}  # the taxonomy's value order (concise, medium, long), else by name
    return {s: {"rows": e["rows"], "values": dict(sorted(e["values"].items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0])))}
            for s, e in sorted(out.items())}


def marker_report(markers: list[dict], taxonomy, tail_share: float = 0.05, sources: list[str] | None = None,
                  per_source: tuple[str, ...] = ("length_bucket",)) -> dict:
    """Counts per category and value; with `sources` (one per row), `per_source` categories are also split by source."""
    n = len(markers)
    out = {"rows": n, "tail_share": tail_share, "taxonomy_version": taxonomy.version, "categories": {}}
    if sources is not None:
        out["by_source"] = {c: {"values": taxonomy.category(c).allowed, "sources": by_source(markers, sources, c, taxonomy.category(c).allowed)}
                            for c in per_source if c in taxonomy.names}
    for cat in taxonomy.categories:
        present = [m[cat.name] for m in markers if cat.name in m]
        entry: dict = {"kind": cat.kind, "rows_with_value": len(present), "coverage": round(len(present) / n, 4) if n else 0.0}
        if cat.kind in ("enum", "bucket"):
            counts = Counter(present)
            entry["values"] = [
                {"value": v, "count": c, "share": round(c / n, 4), "band": "head" if c / n >= tail_share else "tail"}
                for v, c in counts.most_common()
            ]
            entry["tail_values"] = sum(1 for v in entry["values"] if v["band"] == "tail")
        elif present:
            x = np.asarray([float(v) for v in present])
            entry["stats"] = {k: round(float(f(x)), 4) for k, f in
                              {"min": np.min, "p25": lambda a: np.quantile(a, 0.25), "median": np.median,
                               "p75": lambda a: np.quantile(a, 0.75), "max": np.max, "mean": np.mean}.items()}
        out["categories"][cat.name] = entry
    return out


def report_markdown(report: dict) -> str:
    lines = [f"# Marker report ({report['rows']} rows; tail = values under {report['tail_share']:.0%} of rows)", "",
             "| category | value | count | share | band |", "|---|---|---|---|---|"]
    for name, entry in report["categories"].items():
        for v in entry.get("values", []):
            lines.append(f"| {name} | {v['value']} | {v['count']} | {v['share']:.2%} | {v['band']} |")
        if "stats" in entry:
            s = entry["stats"]
            lines.append(f"| {name} | min {s['min']:g} / median {s['median']:g} / max {s['max']:g} | {entry['rows_with_value']} | {entry['coverage']:.2%} | numeric |")
        if not entry["rows_with_value"]:
            lines.append(f"| {name} | (no value) | 0 | 0.00% | - |")
    for name, split in report.get("by_source", {}).items():
        table = split["sources"]
        seen = {v for e in table.values() for v in e["values"]}
        values = [v for v in split["values"] or sorted(seen) if v in seen]
        lines += ["", f"## {name} by source (share of the source's rows)", "",
                  "| source | " + " | ".join(values) + " | rows |", "|---|" + "---|" * (len(values) + 1)]
        for src, e in table.items():
            shares = " | ".join(f"{e['values'].get(v, 0) / e['rows']:.2f}" for v in values)
            lines.append(f"| {src} | {shares} | {e['rows']:,} |")
    if "tagger" in report:
        lines += tagger_markdown(report["tagger"])
    return "\n".join(lines) + "\n"


def tagger_summary(provenance: list[dict], categories: list[str], student: dict) -> dict:
    """The marker report's distilled-tagger section, per category: who set the value (teacher coverage: metadata,
    the label file or the LLM teacher; student), the share left Unspecified by the student, the student's agreement with the teacher
    on its held-out slice and its accuracy on the hand-labelled set (from `student.json`).

    >>> p = [{"domain": {"by": "metadata"}}, {"domain": {"by": "distilled", "note": "unspecified: confidence below 0.5"}}]
    >>> s = tagger_summary(p, ["domain"], {"heads": {}, "info": {}})["categories"]["domain"]
    >>> s["teacher_coverage"], s["student_share"], s["unspecified_share"]
    (0.5, 0.5, 0.5)
    """
    n = len(provenance)
    evaluation = (student["info"].get("evaluation") or {})
    out = {"rows": n, "evaluation": {k: v for k, v in evaluation.items() if k != "categories"}, "categories": {}}
    for cat in categories:
        by = [p.get(cat, {}) for p in provenance]
        teacher = sum(r.get("by") in ("metadata", "file", "llm") for r in by)
        student_rows = [r for r in by if r.get("by") == "distilled"]
        open_rows = sum(str(r.get("note") or "").startswith("unspecified") for r in student_rows)
        not_tagged = sum(str(r.get("note") or "").startswith("not tagged") for r in by)
        head = student["heads"].get(cat, {}).get("stats", {})
        entry = {"teacher_coverage": round(teacher / n, 4) if n else 0.0, "student_share": round(len(student_rows) / n, 4) if n else 0.0,
                 "unspecified_share": round(open_rows / n, 4) if n else 0.0, "not_tagged": not_tagged,
                 "teacher_rows": head.get("teacher_rows"), "heldout_rows": head.get("heldout_rows"),
                 "agreement": head.get("agreement")}
        scored = (evaluation.get("categories") or {}).get(cat)
        if scored:
            entry["hand_accuracy"] = scored["argmax"]
        out["categories"][cat] = entry
    return out


def tagger_markdown(t: dict) -> list[str]:
    """The distilled tagger's table: teacher coverage, student share, Unspecified, agreement, hand-set accuracy."""
    ev = t.get("evaluation") or {}
    lines = ["", "## Distilled tagger (share of all rows; agreement on the teacher's held-out slice; accuracy on "
             f"{ev.get('file') or 'no hand-labelled set'}{', ' + ev['method'] if ev.get('method') else ''})", "",
             "| category | teacher coverage | student | left Unspecified | not tagged | held-out agreement (n) | "
             "hand-set accuracy [95% CI] | majority baseline |", "|---|---|---|---|---|---|---|---|"]
    for cat, e in t["categories"].items():
        agree = f"{e['agreement']:.1%} ({e['heldout_rows']})" if e.get("agreement") is not None else "-"
        acc = e.get("hand_accuracy")
        hand = f"{acc['accuracy']:.1%} [{acc['ci95'][0]:.1%}, {acc['ci95'][1]:.1%}] (n={acc['n']})" if acc else "-"
        major = f"{acc['majority_accuracy']:.1%} ({acc['majority']})" if acc else "-"
        lines.append(f"| {cat} | {e['teacher_coverage']:.2%} | {e['student_share']:.2%} | {e['unspecified_share']:.2%} | "
                     f"{e['not_tagged']} | {agree} | {hand} | {major} |")
    return lines


def report_png(report: dict) -> bytes:
    """One horizontal bar chart per enum/bucket category with values; tail bars in a second colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cats = [(k, e) for k, e in report["categories"].items() if e.get("values")]
    cols = 3
    rows = max(1, -(-len(cats) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.flat[len(cats):]:
        ax.axis("off")
    for ax, (name, entry) in zip(axes.flat, cats):
        values = entry["values"][::-1]
        ax.barh([v["value"] for v in values], [v["share"] for v in values],
                color=["#c44e52" if v["band"] == "tail" else "#4c72b0" for v in values])
        ax.axvline(report["tail_share"], color="grey", linestyle="--", linewidth=0.8)
        ax.set_title(f"{name} (coverage {entry['coverage']:.0%})", fontsize=10)
        ax.tick_params(labelsize=7)
    fig.suptitle(f"Marker distribution, {report['rows']} rows (red: tail < {report['tail_share']:.0%})")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()
