"""Generated math questions: every module runs, answers are right, output depends only on the seed."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from collections import Counter

import pytest
import sympy

from treasure.corpus.config import MathematicsSource
from treasure.corpus.mathematics import generate, training_modules
from treasure.corpus.schema import ParsedRecord

FINGERPRINT = (
    "import hashlib, json\n"
    "from treasure.corpus.config import MathematicsSource\n"
    "from treasure.corpus.mathematics import generate\n"
    "r = generate(MathematicsSource(type='mathematics', count={count}), seed={seed})\n"
    "print(hashlib.sha256(json.dumps([(i.record, i.prompt, i.response) for i in r.items]).encode()).hexdigest())\n"
)


def fingerprint(items) -> str:
    return hashlib.sha256(json.dumps([(i.record, i.prompt, i.response) for i in items]).encode()).hexdigest()


@pytest.fixture(scope="module")
def questions():
    modules = training_modules()
    return modules, generate(MathematicsSource(type="mathematics", count=2 * len(modules)), seed=0)


def test_every_module_generates_within_the_package_limits(questions):
    from mathematics_dataset import generate_settings

    modules, got = questions
    assert all(isinstance(i, ParsedRecord) for i in got.items), [i for i in got.items if not isinstance(i, ParsedRecord)][:3]
    assert Counter(i.metadata["module"] for i in got.items) == {m: 2 for m in modules}
    assert all(len(i.prompt) <= generate_settings.MAX_QUESTION_LENGTH for i in got.items)
    assert {i.metadata["domain_hint"] for i in got.items} == {"Math"} and got.stats["modules"] == len(modules)


def test_arithmetic_answers_are_right(questions):
    _, got = questions
    checked = 0
    for item in got.items:
        if item.metadata["module"] in ("arithmetic__add_or_sub", "arithmetic__mul", "arithmetic__div"):
            expression = item.prompt  # e.g. "Calculate 14880 divided by -10." / "Sum -3.2 and -0.207."
            numbers = [sympy.Rational(t) for t in re.findall(r"-?\d+(?:\.\d+)?", expression)]
            assert len(numbers) >= 2, expression
            assert any(sympy.Rational(item.response) == v for v in
                       (numbers[0] + numbers[1], numbers[0] - numbers[1], numbers[1] - numbers[0],
                        numbers[0] * numbers[1], numbers[0] / numbers[1] if numbers[1] else None) if v is not None), item
            checked += 1
    assert checked == 6


def test_same_seed_same_questions_in_process_and_under_another_hash_seed():
    count = len(training_modules())  # one question per module
    first = generate(MathematicsSource(type="mathematics", count=count), seed=0)
    again = generate(MathematicsSource(type="mathematics", count=count), seed=0)
    assert fingerprint(again.items) == fingerprint(first.items)
    assert fingerprint(generate(MathematicsSource(type="mathematics", count=count), seed=1).items) != fingerprint(first.items)
    env = {**os.environ, "PYTHONHASHSEED": "12345"}  # str hashing differs in the child process
    out = subprocess.run([sys.executable, "-c", FINGERPRINT.format(count=count, seed=0)], env=env,
                         capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == fingerprint(first.items)


def test_unknown_module_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown mathematics modules.*algebra__linear_1d"):
        generate(MathematicsSource(type="mathematics", count=3, modules=["algebra__nope"]), seed=0)
