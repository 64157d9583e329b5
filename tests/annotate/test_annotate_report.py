"""The marker report's per-source table: whether a source already predicts a marker's value."""

from __future__ import annotations


def test_length_by_source_table_counts_variants_apart(repo):
    from treasure.annotate.report import marker_report, report_markdown
    from treasure.taxonomy import load_taxonomy

    tax = load_taxonomy(repo / "pipelines/configs/taxonomy_demo.yaml")
    markers = [{"length_bucket": "long"}] * 3 + [{"length_bucket": "concise"}, {"length_bucket": "medium"}] + [{}]
    sources = ["arena-hard"] * 3 + ["arena-hard (variants)"] * 2 + ["math"]
    report = marker_report(markers, tax, 0.05, sources=sources)
    split = report["by_source"]["length_bucket"]
    assert split["values"] == ["concise", "medium", "long"]
    assert split["sources"] == {"arena-hard": {"rows": 3, "values": {"long": 3}},
                                "arena-hard (variants)": {"rows": 2, "values": {"concise": 1, "medium": 1}},
                                "math": {"rows": 1, "values": {}}}
    md = report_markdown(report)
    assert "| source | concise | medium | long | rows |" in md
    assert "| arena-hard (variants) | 0.50 | 0.50 | 0.00 | 2 |" in md
    assert "| math | 0.00 | 0.00 | 0.00 | 1 |" in md
