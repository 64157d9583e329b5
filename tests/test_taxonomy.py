"""Taxonomy: the paper's file loads, bad files fail with file/key/line, versions are stable."""

import re
import textwrap

import pytest

from treasure.taxonomy import TaxonomyError, load_taxonomy


def test_paper_taxonomy_has_13_categories(taxonomy):
    assert len(taxonomy.names) == 13
    assert taxonomy.names[:3] == ["quality", "quality_bucket", "length_tokens"]
    assert len(taxonomy.category("task").allowed) == 14
    assert len(taxonomy.category("domain").allowed) == 11
    assert len(taxonomy.category("language").allowed) == 23
    assert taxonomy.tag == "TEMPLATE"


def test_version_is_stable_and_content_based(taxonomy, tmp_path):
    assert taxonomy.version == load_taxonomy("paper").version
    copy = tmp_path / "copy.yaml"
    copy.write_text("# a comment changes nothing\n" + taxonomy.to_yaml())
    assert load_taxonomy(copy).version == taxonomy.version
    changed = tmp_path / "changed.yaml"
    changed.write_text("extends: paper\ntag: MARKER_LIST\n")
    assert load_taxonomy(changed).version != taxonomy.version


def test_bucket_thresholds(taxonomy):
    cat = taxonomy.category("length_bucket")
    assert [cat.bucket_of(x) for x in (0, 299, 300, 999, 1000, 10**6)] == ["concise", "concise", "medium", "medium", "long", "long"]


def test_extend_replaces_and_appends(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text(textwrap.dedent("""\
        extends: paper
        name: mine
        categories:
          - name: length_bucket
            kind: bucket
            source: length_tokens
            buckets: [{value: short, below: 48}, {value: mid, below: 160}, {value: long}]
          - name: tone
            kind: enum
            values: [{value: Friendly}, {value: Neutral}]
        """))
    tax = load_taxonomy(f)
    assert tax.names[-1] == "tone" and len(tax.names) == 14
    assert tax.category("length_bucket").allowed == ["short", "mid", "long"]
    assert tax.names.index("length_bucket") == 5


@pytest.mark.parametrize(
    "body, expect",
    [
        ("name: x\ncategories:\n  - name: a\n    kind: enum\n    values: []\n", "has no values"),
        ("name: x\ncategories:\n  - name: a\n    kind: enum\n    values: [{value: A}, {value: A}]\n", "twice"),
        ("name: x\ncategories:\n  - name: a\n    kind: enum\n    colour: red\n    values: [{value: A}]\n", "line 5: categories.0.colour"),
        ("name: x\ncategories: []\n", "at least one category"),
        ("name: x\ncategories:\n  - {name: n, kind: int}\n  - name: b\n    kind: bucket\n    source: n\n    buckets: [{value: s, below: 10}, {value: m, below: 5}, {value: l}]\n", "increasing"),
        ("name: x\ncategories:\n  - {name: n, kind: int}\n  - {name: b, kind: bucket, source: n, buckets: [{value: s}, {value: l}]}\n", "needs 'below'"),
        ("name: x\ncategories:\n  - {name: b, kind: bucket, source: zz, buckets: [{value: s, below: 1}, {value: l}]}\n", "must be an int category"),
        ("name: x\nname: y\ncategories: []\n", "appears twice"),
        ("name: x\ncategories:\n  - {name: 'bad name', kind: int}\n", "identifier"),
        ("name: x\ncategories:\n  - {name: a, kind: enum, values: [{value: '<b>'}]}\n", "without '<'"),
        ("- just a list\n", "top level"),
    ],
)
def test_bad_taxonomies_fail_clearly(tmp_path, body, expect):
    f = tmp_path / "bad.yaml"
    f.write_text(body)
    with pytest.raises(TaxonomyError) as e:
        load_taxonomy(f)
    assert expect in str(e.value)
    assert "bad.yaml" in str(e.value)


def test_unknown_builtin_names_the_choices():
    with pytest.raises(TaxonomyError, match="paper"):
        load_taxonomy("no-such-taxonomy")


def test_validate_markers(taxonomy):
    ok = taxonomy.validate_markers({"language": "English", "length_tokens": "042", "quality": 0.12345, "task": "Rewrite"})
    assert list(ok) == ["quality", "length_tokens", "task", "language"]
    assert ok["length_tokens"] == "42" and ok["quality"] == "0.123"
    with pytest.raises(ValueError, match="not one of"):
        taxonomy.validate_markers({"domain": "Astrology"})
    with pytest.raises(ValueError, match="unknown marker categories"):
        taxonomy.validate_markers({"mood": "happy"})
    with pytest.raises(ValueError, match="non-negative integer"):
        taxonomy.validate_markers({"length_tokens": "-3"})
    with pytest.raises(ValueError, match="finite"):
        taxonomy.validate_markers({"quality": "nan"})


def test_block_selects_and_orders_block_categories(tmp_path):
    from treasure.template import render_block, split_output

    f = tmp_path / "short.yaml"
    f.write_text("extends: paper\nblock: [length_bucket, domain, language]\n")
    tax = load_taxonomy(f)
    assert tax.block_names == ["length_bucket", "domain", "language"]
    assert tax.names == load_taxonomy("paper").names  # every category is still annotated and validated
    markers = {"language": "English", "length_tokens": 30, "domain": "Math", "length_bucket": "concise", "quality": 0.5}
    assert render_block(markers, tax) == (
        "<TEMPLATE><length_bucket>concise</length_bucket><domain>Math</domain><language>English</language></TEMPLATE>"
    )
    parsed = split_output("<TEMPLATE><language>English</language><length_tokens>3</length_tokens></TEMPLATE>\nhi", tax)
    assert parsed.markers == {"language": "English"} and parsed.answer == "hi"
    assert parsed.problems == ["category <length_tokens> is not part of the block"]
    assert tax.version != load_taxonomy("paper").version


@pytest.mark.parametrize("block, expect", [("[domain, nope]", "unknown: ['nope']"), ("[domain, domain]", "repeated: ['domain']"),
                                           ("[]", "block must list")])
def test_bad_block_fails_clearly(tmp_path, block, expect):
    f = tmp_path / "bad.yaml"
    f.write_text(f"extends: paper\nblock: {block}\n")
    with pytest.raises(TaxonomyError, match=re.escape(expect)):
        load_taxonomy(f)
