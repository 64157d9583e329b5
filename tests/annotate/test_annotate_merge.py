"""Merge precedence and provenance, metadata mapping, quality buckets, report bands, config files."""

import pytest

from treasure.annotate.config import AnnotateConfig, SourceMapping
from treasure.annotate.merge import Candidate, merge, prov
from treasure.annotate.metadata import metadata_markers
from treasure.annotate.quality import quality_buckets
from treasure.annotate.report import marker_report, report_markdown, report_png
from treasure.config import load_config


def test_annotate_precedence_is_configurable(taxonomy):
    cands = [Candidate("domain", "Code", prov("llm", "m", "v1", 0.9, "Code")), Candidate("domain", "Math", prov("metadata"))]
    assert merge(cands, {"default": ["metadata", "llm"]}, taxonomy)[0] == {"domain": "Math"}
    markers, provenance = merge(cands, {"default": ["metadata"], "domain": ["llm", "metadata"]}, taxonomy)
    assert markers == {"domain": "Code"} and provenance["domain"]["confidence"] == 0.9


def test_annotate_no_value_outcome_keeps_provenance_only(taxonomy):
    note = prov("llm", raw="Cooking", note="unspecified: answer not in the class list")
    markers, provenance = merge([Candidate("task", None, note)], {"default": ["metadata", "llm"]}, taxonomy)
    assert markers == {} and provenance["task"]["raw"] == "Cooking"
    markers, _ = merge([Candidate("task", None, note), Candidate("task", "Rewrite", prov("rule"))], {"default": ["llm", "rule"]}, taxonomy)
    assert markers == {"task": "Rewrite"}  # a real value beats a no-value outcome


def test_annotate_merge_rejects_off_taxonomy_values(taxonomy):
    with pytest.raises(ValueError):
        merge([Candidate("domain", "Cooking", prov("metadata"))], {"default": ["metadata"]}, taxonomy)


def test_annotate_metadata_mapping():
    m = {"self-instruct": SourceMapping(markers={"source": "Human"}, fields={"motivation_app": {"Tasty": {"domain": "Culture"}}})}
    assert metadata_markers("self-instruct", '{"motivation_app": "Tasty"}', None, m) == {"source": "Human", "domain": "Culture"}
    assert metadata_markers("self-instruct", '{"motivation_app": "Other"}', "English", m) == {"language": "English", "source": "Human"}
    with pytest.raises(ValueError):
        metadata_markers("self-instruct", "[1, 2]", None, m)


def test_annotate_quality_buckets_per_language():
    langs = ["en"] * 8 + ["zh"] * 4
    scores = [8, 7, 6, 5, 4, 3, 2, 1] + [-1, -2, -3, -4]
    out = quality_buckets(langs, [float(s) for s in scores])
    assert out[:8] == ["1", "1", "2", "2", "3", "3", "4", "4"] and out[8:] == ["1", "2", "3", "4"]
    assert quality_buckets(["en", "en"], [None, 1.0]) == [None, "1"]


def test_annotate_report_bands(taxonomy):
    markers = [{"domain": "Code", "length_tokens": "10"}] * 96 + [{"domain": "Legal", "length_tokens": "90"}] * 4
    r = marker_report(markers, taxonomy, 0.05)
    assert r["categories"]["domain"]["values"][1] == {"value": "Legal", "count": 4, "share": 0.04, "band": "tail"}
    assert r["categories"]["length_tokens"]["stats"]["max"] == 90.0
    assert "| domain | Legal | 4 | 4.00% | tail |" in report_markdown(r)
    assert report_png(r)[:4] == b"\x89PNG"


def test_annotate_demo_config_loads(repo):
    cfg = load_config(AnnotateConfig, repo / "pipelines/configs/demo.yaml", section="annotate")
    assert cfg.tagger.max_rows > 0 and "self-instruct" in cfg.metadata
    from treasure.annotate.stage import validate_mapping
    from treasure.taxonomy import load_taxonomy

    validate_mapping(cfg, load_taxonomy(repo / cfg.taxonomy))
