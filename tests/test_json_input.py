"""treasure.json_input: every hostile JSON is one clear JSONInputError."""

from __future__ import annotations

import pytest

import treasure.json_input as ji


@pytest.mark.parametrize("text, needle", [
    ("[" * 5000 + "]" * 5000, "too deeply"),  # RecursionError inside json.loads
    ('{"n": ' + "9" * 5000 + "}", "JSON not accepted"),  # CPython's int-size guard
    ('{"a": ', "not valid JSON"),
    (b"\xff\xfe", "not UTF-8"),
])
def test_hostile_inputs_are_one_error_type(text, needle):
    with pytest.raises(ji.JSONInputError, match=needle):
        ji.parse_json(text)


def test_depth_is_counted_outside_strings_only():
    assert ji.nesting_depth('["[[[[", {"x": "}}}"}]') == 2
    assert ji.parse_json('["[[[["]', max_depth=1) == ["[[[["]
