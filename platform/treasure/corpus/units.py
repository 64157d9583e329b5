"""Units of reading work: one per input file of a file source, one per bundled or generated source.

The normalize stage plans units in the driver (`plan`), reads and checks them in parallel Ray Data
tasks (`unit_tables`, a plain function), and deduplicates, caps and accounts for them in the
driver. A unit's output is a stream of Arrow tables of `UNIT_SCHEMA`: one `row` per checked
record, one `error` per rejected record, then one `meta` row with the unit's lineage and stats, so
every record a unit read is in its output exactly once.

>>> import pathlib, tempfile
>>> from treasure.corpus.config import NormalizeConfig
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> _ = (root / "a.jsonl").write_text('{"q": "1+1?", "a": "2"}\\n{"q": "2+2?"}\\n{"q": "3+3?", "a": "6"}')
>>> units = plan(NormalizeConfig(input=str(root), sources={"u": {"type": "file", "path": "*.jsonl", "prompt": ["q"],
...                                                              "response": "a"}}))
>>> tables = list(unit_tables(units[0], batch_rows=2))
>>> [t.column("kind").to_pylist() for t in tables]
[['row', 'error'], ['row', 'meta']]
"""

from __future__ import annotations

import json
import time
from typing import Iterator

import pyarrow as pa
from pydantic import TypeAdapter

from treasure.corpus.config import NormalizeConfig, SourceConfig
from treasure.corpus.normalize import check
from treasure.corpus.schema import Rejected, clip_raw
from treasure.corpus.sources import SourceInput, file_units

UNIT_SCHEMA = pa.schema([
    pa.field("kind", pa.string(), nullable=False),  # row | error | meta
    pa.field("source", pa.string(), nullable=False),
    pa.field("id", pa.string()),
    pa.field("prompt", pa.string()),
    pa.field("response", pa.string()),
    pa.field("language", pa.string()),
    pa.field("metadata", pa.string()),
    pa.field("record", pa.string()),
    pa.field("reason", pa.string()),
    pa.field("raw", pa.string()),                   # error: the record as text; meta: {lineage, stats} JSON
])

_SOURCE = TypeAdapter(SourceConfig)


def plan(config: NormalizeConfig) -> list[dict]:
    """Every enabled source's units, in config order (a file source: one per file, in path order)."""
    units = []
    for name, cfg in config.sources.items():
        if not cfg.enabled:
            continue
        base = {"source": name, "config": cfg.model_dump(mode="json"), "root": config.input, "seed": config.seed}
        if cfg.type == "file":
            units += [{**base, "file": uri, "label": label} for uri, label in file_units(cfg, config.input)]
        else:
            units.append(base)
    return units


def read_unit(unit: dict) -> SourceInput:
    """The items of one unit: its file through the file reader, or its whole bundled/generated source."""
    cfg = _SOURCE.validate_python(unit["config"])
    if cfg.type == "file":
        from treasure.corpus.sources import read_file_source

        return read_file_source(cfg, unit["root"], (unit["file"], unit["label"]))
    if cfg.type == "chitchat":
        from treasure.corpus.chitchat import read_chitchat

        return read_chitchat(cfg, unit["root"])
    if cfg.type == "mathematics":
        from treasure.corpus.mathematics import generate

        return generate(cfg, unit["seed"])
    from treasure.corpus import sources

    readers = {"arena-hard": sources.read_arena_hard, "alpaca-zh": sources.read_alpaca_zh,
               "self-instruct": sources.read_self_instruct}
    return readers[cfg.type](cfg, unit["root"])


def unit_tables(unit: dict, batch_rows: int = 5000) -> Iterator[pa.Table]:
    """A unit read and checked: tables of at most `batch_rows` rows, the `meta` row last."""
    started = time.perf_counter()
    source = unit["source"]
    read = read_unit(unit)
    batch: list[dict] = []
    for item in read.items:
        outcome = item if isinstance(item, Rejected) else check(source, item)
        if isinstance(outcome, Rejected):
            batch.append({"kind": "error", "source": source, "record": outcome.record, "reason": outcome.reason,
                          "raw": clip_raw(outcome.raw)})
        else:
            batch.append({"kind": "row", **outcome})
        if len(batch) >= batch_rows:
            yield pa.Table.from_pylist(batch, schema=UNIT_SCHEMA)
            batch = []
    stats = {**read.stats, "read_seconds": round(time.perf_counter() - started, 3)}
    batch.append({"kind": "meta", "source": source, "raw": json.dumps({"lineage": read.lineage, "stats": stats})})
    yield pa.Table.from_pylist(batch, schema=UNIT_SCHEMA)
