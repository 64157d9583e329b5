"""Math questions with exact answers from DeepMind's `mathematics_dataset` (PyPI 1.0.1, Apache-2.0).

The package generates problems from the global `random` and `numpy.random` states; we seed both
from (seed, module name) before each module's batch and restore them afterwards, so the questions
depend only on the config. `count` questions are spread round-robin over the modules. Like the
package's own `generate.py`, a problem longer than its length limits is drawn again (counted in
the stats as `resampled`); a module that raises yields an error row per failed question.

The package (2019) predates sympy >= 1.7 and numpy 2: `compat()` adds back the three names it
needs (`sympy.solvers.diophantine.base_solution_linear`, `np.object`, `ndarray.itemset`) inside
the package's own namespace only; nothing else sees them. It also removes two orderings that
came from hashing (variable letters drawn from a set of str, entities de-duplicated through a set
of objects), so the same seed gives the same questions under any PYTHONHASHSEED.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import random
import sys
import types
import warnings

import numpy as np

from treasure.corpus.config import MathematicsSource
from treasure.corpus.schema import ParsedRecord, Rejected
from treasure.corpus.sources import Item, SourceInput

HINTS = {"domain_hint": "Math", "task_hint": "Reasoning", "source_kind": "Synthetic"}
MAX_TRIES = 20  # draws per question before it is reported as an error row


class _ItemsetArray(np.ndarray):
    """ndarray with numpy 1's `itemset`, which numpy 2 removed (the package calls it)."""

    def itemset(self, index, value):
        self[index] = value


class _NumpyCompat(types.ModuleType):
    """The `np` the package's polynomial sampler sees: numpy plus `np.object` and `itemset` arrays."""

    object = object

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def zeros(*args, **kwargs):
        return np.zeros(*args, **kwargs).view(_ItemsetArray)

    @staticmethod
    def empty(*args, **kwargs):
        return np.empty(*args, **kwargs).view(_ItemsetArray)


def compat() -> None:
    """Make `mathematics_dataset` importable and runnable with today's sympy and numpy (idempotent)."""
    if importlib.util.find_spec("mathematics_dataset") is None:
        raise FileNotFoundError("mathematics_dataset is not installed: `pip install 'treasure-hunt[demo]'` (Python 3.11; "
                                "on 3.12+ the package cannot run: disable the mathematics source)")
    importlib.import_module("sympy.solvers.diophantine")
    dio = sys.modules["sympy.solvers.diophantine"]  # the package, not the function sympy re-exports
    if not hasattr(dio, "base_solution_linear"):
        from sympy.solvers.diophantine.diophantine import base_solution_linear

        dio.base_solution_linear = base_solution_linear
    polynomials = importlib.import_module("mathematics_dataset.sample.polynomials")
    if not isinstance(polynomials.np, _NumpyCompat):
        polynomials.np = _NumpyCompat("numpy")
    composition = importlib.import_module("mathematics_dataset.util.composition")
    if composition.Context.pop is not _sorted_pop:
        _make_deterministic(composition)


def _sorted_pop(self):
    """`Context.pop` choosing from the sorted free letters (the package iterates a set of str,
    whose order changes with PYTHONHASHSEED)."""
    from mathematics_dataset.util.composition import _ALLOWED_SYMBOLS

    allowed = _ALLOWED_SYMBOLS.difference(self._relation_symbols, self._self_symbols, self._child_symbols)
    if not allowed:
        raise ValueError("Ran out of symbols")
    symbol = random.choice(sorted(allowed))
    self._self_symbols.add(symbol)
    return symbol


def _expand_entities(context, **kwargs):
    """The package's `expand_entities`, de-duplicating in insertion order instead of through a set
    of objects (which iterates in memory-address order)."""
    from mathematics_dataset.util.composition import Entity

    kwargs = kwargs.copy()
    entities = dict.fromkeys(context.child_entities)
    for key, maybe_entity in kwargs.items():
        if isinstance(maybe_entity, Entity):
            entities[maybe_entity] = None
            kwargs[key] = maybe_entity.handle
    entities = list(entities)
    random.shuffle(entities)
    descriptions = []
    for entity in entities:
        descriptions.append(entity.child_description)
        if not entity.expression_used:
            descriptions.append(entity.description)
    return " ".join(d for d in descriptions if d), kwargs


def _make_deterministic(composition) -> None:
    """Questions must depend only on the seed: no str-hash or memory-address ordering."""
    composition.Context.pop = _sorted_pop
    composition.expand_entities = _expand_entities


def training_modules() -> dict:
    """{module name such as 'algebra__linear_1d': callable returning a Problem}, sorted by name."""
    compat()
    from mathematics_dataset.modules import modules

    flat: dict = {}

    def add(tree: dict, prefix: str = "") -> None:
        for key, value in tree.items():
            name = f"{prefix}__{key}" if prefix else key
            add(value, name) if isinstance(value, dict) else flat.__setitem__(name, value)

    add(modules.train(lambda entropy_range: entropy_range))  # full entropy range: easy to hard
    return dict(sorted(flat.items()))


def _seed_of(seed: int, module: str) -> int:
    return int(hashlib.sha256(f"{seed}:{module}".encode()).hexdigest()[:8], 16)


def _draw(module, limits: tuple[int, int]) -> tuple[str, str, int]:
    """(question, answer, extra draws) from one module within the package's length limits."""
    for tries in range(MAX_TRIES):
        problem = module()
        question, answer = str(problem.question), str(problem.answer)
        if len(question) <= limits[0] and len(answer) <= limits[1]:
            return question, answer, tries
    raise RuntimeError(f"no problem within the length limits {limits} after {MAX_TRIES} draws")


def generate(cfg: MathematicsSource, seed: int) -> SourceInput:
    """`cfg.count` questions spread round-robin over the modules; the same seed gives the same items."""
    from importlib.metadata import version

    from mathematics_dataset import generate_settings

    available = training_modules()
    names = cfg.modules or list(available)
    unknown = sorted(set(names) - set(available))
    if unknown:
        raise ValueError(f"unknown mathematics modules {unknown}; known: {', '.join(available)}")
    limits = (generate_settings.MAX_QUESTION_LENGTH, generate_settings.MAX_ANSWER_LENGTH)
    per_module = {n: cfg.count // len(names) + (i < cfg.count % len(names)) for i, n in enumerate(names)}
    with warnings.catch_warnings():
        # The package calls random.randrange with floats: deprecated in 3.10, an error from 3.12
        # (this project pins Python 3.11).
        warnings.filterwarnings("ignore", "non-integer arguments to randrange", DeprecationWarning)
        items, resampled = _generate_all(available, per_module, limits, seed)
    lineage = {"package": f"mathematics_dataset {version('mathematics-dataset')}", "seed": seed, "modules": names}
    return SourceInput(items, lineage, stats={"resampled": resampled, "modules": len(names)})


def _generate_all(available: dict, per_module: dict[str, int], limits: tuple[int, int], seed: int):
    """(items, extra draws) for every module, each module's batch from generators seeded by (seed, module)."""
    from sympy.core import random as sympy_random

    items: list[Item] = []
    resampled = 0
    # The package draws from three global generators: Python's, numpy's and sympy's (randprime).
    saved = random.getstate(), np.random.get_state(), sympy_random.rng.getstate()
    try:
        for name, count in per_module.items():
            for seed_global in (random.seed, np.random.seed, sympy_random.seed):
                seed_global(_seed_of(seed, name))
            metadata = {"module": name, "module_group": name.split("__")[0],
                        "composed": name.endswith("_composed"), **HINTS}
            for j in range(count):
                label = f"{name}#{j}"
                try:
                    question, answer, extra = _draw(available[name], limits)
                except Exception as e:  # a broken module must be reported per question, not crash the corpus
                    items.append(Rejected(label, f"generation failed: {type(e).__name__}: {e}", ""))
                    continue
                resampled += extra
                items.append(ParsedRecord(label, question, answer, "English", metadata))
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        sympy_random.rng.setstate(saved[2])
    return items, resampled
