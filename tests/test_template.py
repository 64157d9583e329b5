"""Template: render/parse round trips (property-based), output splitting, and injection defence."""

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from treasure.taxonomy import load_taxonomy
from treasure.template import (
    NEUTRAL_BRACKET,
    neutralize,
    parse_block,
    render_block,
    render_completion,
    render_prompt,
    split_output,
    split_prompt,
)

TAX = load_taxonomy("paper")
ALT = TAX.model_copy(update={"tag": "MARKER_LIST"})


def marker_strategy(tax):
    """Any subset of categories with a valid value each."""
    entries = {}
    for cat in tax.categories:
        if cat.allowed:
            entries[cat.name] = st.sampled_from(cat.allowed)
        elif cat.kind == "int":
            entries[cat.name] = st.integers(0, 10**6).map(str)
        else:
            entries[cat.name] = st.floats(-50, 50, allow_nan=False).map(lambda x: f"{x:.3g}")
    return st.fixed_dictionaries({}, optional=entries)


@pytest.mark.parametrize("tax", [TAX, ALT], ids=["TEMPLATE", "MARKER_LIST"])
@given(data=st.data())
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_render_parse_round_trip(tax, data):
    markers = data.draw(marker_strategy(tax))
    expected = tax.validate_markers(markers)
    block = render_block(markers, tax)
    if not markers:
        assert block == ""
        return
    assert parse_block(block, tax) == expected
    assert list(parse_block(block, tax)) == [n for n in tax.names if n in markers]  # taxonomy order
    answer = data.draw(st.text(max_size=50))
    out = split_output(render_completion(markers, answer, tax), tax)
    assert out.markers == expected and out.problems == []
    assert out.answer == neutralize(answer, tax).strip()


def test_whitespace_tolerant_but_never_invents():
    out = split_output("  <TEMPLATE>\n <domain> Legal </domain>\n<task>Haiku</task><mood>x</mood></TEMPLATE>\n\nAnswer.", TAX)
    assert out.markers == {"domain": "Legal"}
    assert out.answer == "Answer."
    assert any("Haiku" in p for p in out.problems) and any("mood" in p for p in out.problems)


def test_missing_and_unclosed_blocks():
    out = split_output("Just an answer.", TAX)
    assert out.markers == {} and out.answer == "Just an answer." and out.problems
    out = split_output("<TEMPLATE><domain>Legal</domain><task>Rew", TAX)
    assert out.markers == {"domain": "Legal"} and out.answer == "" and "not closed" in out.problems[-1]


def test_split_prompt_round_trip():
    p = render_prompt("Translate: hi", {"language": "French"}, TAX)
    assert p == "Translate: hi <TEMPLATE><language>French</language></TEMPLATE>"
    assert split_prompt(p, TAX) == ("Translate: hi", {"language": "French"})
    assert split_prompt("no block", TAX) == ("no block", {})


TAG_NAMES = TAX.names + [TAX.tag]
LOOKALIKE_LT = ["<", "\uff1c", "\ufe64"]  # ASCII, fullwidth, small form: all NFKC → '<'


@st.composite
def hostile_text(draw):
    pieces = draw(
        st.lists(
            st.one_of(
                st.text(max_size=8),
                st.sampled_from(TAG_NAMES).map(lambda n: f"<{n}>"),
                st.sampled_from(TAG_NAMES).map(lambda n: f"</{n}>"),
                st.sampled_from(TAG_NAMES).map(lambda n: f"<{n.upper()}"),
                st.sampled_from(TAG_NAMES).map(lambda n: f"< /{n} >"),
                st.sampled_from(TAG_NAMES).map(lambda n: n[: max(1, len(n) // 2)]),
                st.tuples(st.sampled_from(LOOKALIKE_LT), st.sampled_from(TAG_NAMES)).map(lambda t: f"{t[0]}{t[1]}>"),
                st.sampled_from(TAG_NAMES).map(lambda n: "<" + "".join(chr(0xFF21 + ord(c) - 65) if "A" <= c <= "Z" else c for c in n) + ">"),
                st.sampled_from(TAG_NAMES).map(lambda n: "<" + n[:1] + "\u200b" + n[1:] + ">"),
                st.just(render_block({"domain": "Legal", "language": "English"}, TAX)),
                st.sampled_from(["<", ">", "</", "<<", "a < b", "<div>", "\u2039"]),
            ),
            max_size=12,
        )
    )
    return "".join(pieces)


@given(hostile_text())
@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_user_text_never_parses_as_markers(text):
    safe = neutralize(text, TAX)
    assert neutralize(safe, TAX) == safe  # idempotent
    # No ASCII tag of ours survives, in any case.
    for name in TAG_NAMES:
        assert not re.search(rf"<\s*/?\s*{name}\b", safe, re.IGNORECASE)
    # As user text it cannot add to, remove from or close the requested block.
    requested = {"task": "Rewrite", "language": "English"}
    assert split_prompt(render_prompt(text, requested, TAX), TAX) == (safe, requested)
    assert split_prompt(render_prompt(text, {}, TAX), TAX)[1] == {}
    # As an answer it cannot pose as the model's block.
    assert split_output(safe, TAX).markers == {}


def test_neutralize_keeps_ordinary_angle_brackets():
    text = "if a < b and x<y: print('<div>') # List<String>"
    assert neutralize(text, TAX) == text
    assert neutralize("<task>x</task>", TAX) == f"{NEUTRAL_BRACKET}task>x{NEUTRAL_BRACKET}/task>"
