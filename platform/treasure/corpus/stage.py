"""The normalize stage: read every source on Ray Data, normalize, publish Parquet + manifest, log to MLflow.

Library entry point `run(config)` (see notes in docs/data-formats.md, normalize section):

    <output>/data/part-*.parquet     id, prompt, response, source, language, metadata (JSON string)
    <output>/errors/part-*.parquet   source, record, reason, raw
    <output>/manifest.json           written last: counts per source, lineage, config, MLflow run id

Reading streams: every input file (and every bundled source) is a unit read and checked by a Ray
Data task (`treasure.corpus.units`), in parallel, with outputs in plan order; the driver keeps
only ids (dedup and the `max_rows` sample), appends rows to staged Parquet parts as they arrive,
and accounts for every record exactly once. Memory grows with the row count by one id per row,
not with the text. Reuse, staged write and the manifest are the stage contract's
(treasure.stage): a committed output made by the same config and the same code of this package
is returned as is (`force: true` recomputes); a crash never leaves a mix of old and new files
published as complete.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq

from treasure import storage, tracking
from treasure.corpus.config import NormalizeConfig
from treasure.corpus.length_variants import answer_words, derive
from treasure.corpus.normalize import Tally
from treasure.corpus.schema import ERROR_SCHEMA, ROW_SCHEMA
from treasure.corpus.units import plan, unit_tables
from treasure.stage import Attempt, Plan, Result, Stage


class PartWriter:
    """Rows appended as they come, cut into Parquet part files of `rows_per_file` under `folder`
    (at least one file, even when empty)."""

    def __init__(self, folder: str, schema: pa.Schema, rows_per_file: int):
        self.folder, self.schema, self.rows_per_file = folder, schema, rows_per_file
        self.fs = storage.filesystem(folder)[0]
        self.uris: list[str] = []
        self.rows = 0
        self._writer = self._stream = None
        self._in_part = 0

    def write(self, table: pa.Table) -> None:
        table = table.select(self.schema.names).cast(self.schema)
        while table.num_rows:
            if self._writer is None or self._in_part >= self.rows_per_file:
                self._open()
            take = min(table.num_rows, self.rows_per_file - self._in_part)
            self._writer.write_table(table.slice(0, take))
            self._in_part += take
            self.rows += take
            table = table.slice(take)

    def _open(self) -> None:
        self._close_part()
        uri = storage.join(self.folder, f"part-{len(self.uris):05d}.parquet")
        path = storage.filesystem(uri)[1]
        self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        self._stream = self.fs.open_output_stream(path)
        self._writer = pq.ParquetWriter(self._stream, self.schema)
        self._in_part = 0
        self.uris.append(uri)

    def _close_part(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._stream.close()
            self._writer = self._stream = None

    def close(self) -> list[str]:
        if not self.uris:
            self._open()
        self._close_part()
        return self.uris


def read_units(batch: pa.Table):
    """Ray Data: the unit rows of `batch` read and checked (a generator, so outputs stream)."""
    for unit in batch.column("unit").to_pylist():
        yield from unit_tables(json.loads(unit))


def unit_stream(units: list[dict]):
    """Tables of every unit's outcomes, in plan order, read in parallel by Ray Data tasks."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ordered, ctx.execution_options.preserve_order = ctx.execution_options.preserve_order, True
    try:
        ds = ray.data.from_items([{"unit": json.dumps(u)} for u in units], override_num_blocks=max(1, len(units)))
        yield from ds.map_batches(read_units, batch_size=1, batch_format="pyarrow", num_cpus=1).iter_batches(
            batch_size=None, batch_format="pyarrow")
    finally:
        ctx.execution_options.preserve_order = ordered


def merge_lineage(into: dict, lineage: dict) -> None:
    """Lineage of several units of one source: file lists concatenated, other keys from the first."""
    for key, value in lineage.items():
        if key == "files":
            into.setdefault("files", []).extend(value)
        else:
            into.setdefault(key, value)


def collect(config: NormalizeConfig, staging: str, scratch: str) -> tuple[dict[str, Tally], dict, list[str], dict[str, list[str]]]:
    """Read every unit: error rows into `staging` (`errors/`), unique rows per source into
    `scratch` (`<source>/`); returns (tallies, lineage, error part URIs, unique part URIs per source)."""
    units = plan(config)
    enabled = [name for name, cfg in config.sources.items() if cfg.enabled]
    tallies = {name: Tally(name, config.sources[name].max_rows, config.seed) for name in enabled}
    lineage: dict = {"input": config.input, "sources": {name: {} for name in enabled}}
    errors = PartWriter(storage.join(staging, "errors"), ERROR_SCHEMA, config.rows_per_file)
    unique = {name: PartWriter(storage.join(scratch, name), ROW_SCHEMA, 100_000) for name in enabled}
    for table in unit_stream(units):
        for source in set(table.column("source").to_pylist()):
            part = table.filter(pa.compute.equal(table.column("source"), source))
            kind = part.column("kind").to_pylist()
            tally = tallies[source]
            for k, raw in zip(kind, part.column("raw").to_pylist()):
                if k == "meta":
                    meta = json.loads(raw)
                    merge_lineage(lineage["sources"][source], meta["lineage"])
                    for key, value in meta["stats"].items():
                        tally.stats[key] = round(tally.stats.get(key, 0) + value, 3)
            rows = part.filter(pa.compute.equal(part.column("kind"), "row"))
            keep = [tally.admit(i) for i in rows.column("id").to_pylist()]
            unique[source].write(rows.filter(pa.array(keep, pa.bool_())))
            errs = part.filter(pa.compute.equal(part.column("kind"), "error"))
            for reason in errs.column("reason").to_pylist():
                tally.reject(reason)
            errors.write(errs)
    return tallies, lineage, errors.close(), {name: w.close() for name, w in unique.items()}


def finish_rows(config: NormalizeConfig, tallies: dict[str, Tally], unique: dict[str, list[str]], folder: str) -> list[str]:
    """The published data parts: each source's unique rows minus those `max_rows` leaves out, then its
    shorter-answer variants (when `length_variants` names it), sources in config order."""
    data = PartWriter(folder, ROW_SCHEMA, config.rows_per_file)
    for name, tally in tallies.items():
        keep = tally.keep()
        for uri in unique[name]:
            table = read_parquet(uri)
            if keep is not None:
                table = table.filter(pa.array([i in keep for i in table.column("id").to_pylist()], pa.bool_()))
            data.write(table)
        if name in config.length_variants.sources:
            derived = 0
            for uri in unique[name]:
                rows = [r for r in read_parquet(uri).to_pylist() if keep is None or r["id"] in keep]
                variants = derive(rows, config.length_variants.budgets, config.length_variants.min_words, answer_words)
                data.write(pa.Table.from_pylist(variants, schema=ROW_SCHEMA))
                derived += len(variants)
            tally.stats["derived"] = derived  # rows = kept records + derived variants
    return data.close()


def read_parquet(uri: str) -> pa.Table:
    fs, path = storage.filesystem(uri)
    with fs.open_input_file(path) as f:
        return pq.read_table(f)


def manifest_fields(per: dict[str, dict]) -> dict:
    """The manifest's counts: rows, errors, duplicates, capped and records, in total and per source."""
    return {
        "rows": sum(c["rows"] for c in per.values()),  # kept records + derived variants
        "error_rows": sum(c["errors"] for c in per.values()),
        "rows_per_source": {s: c["rows"] for s, c in per.items()},
        "errors_per_source": {s: c["errors"] for s, c in per.items()},
        "duplicates_per_source": {s: c["duplicates"] for s, c in per.items()},
        "capped_per_source": {s: c["capped"] for s, c in per.items()},
        "records_per_source": {s: c["records"] for s, c in per.items()},
        "duplicates": sum(c["duplicates"] for c in per.values()),
        "source_stats": per,
    }


def plan_normalize(config: NormalizeConfig) -> Plan:
    return Plan(run_name="normalize")


def work(config: NormalizeConfig, plan: Plan, attempt: Attempt) -> Result:
    """Read every unit, write the data and error parts to the attempt's staging; log the counts."""
    import mlflow

    scratch = storage.join(attempt.scratch, "unique")
    storage.delete(scratch)  # a crashed attempt's rows: never trusted
    tallies, lineage, _, unique = collect(config, attempt.staging, scratch)
    finish_rows(config, tallies, unique, attempt.path("data"))
    storage.delete(scratch)
    per = {}
    for name, tally in tallies.items():
        per[name] = tally.counts()  # raises unless every record is accounted for
        per[name]["rows"] += per[name].get("derived", 0)  # rows = kept records + derived variants
    tracking.log_lineage(lineage)
    fields = manifest_fields(per)
    metrics = {"rows": fields["rows"], "error_rows": fields["error_rows"], "duplicates": fields["duplicates"],
               "records": sum(fields["records_per_source"].values()), "capped": sum(fields["capped_per_source"].values())}
    for name, counts in per.items():
        mlflow.log_metrics({f"{name}.{k}": float(v) for k, v in counts.items()})
    mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
    mlflow.log_metric("seconds", attempt.seconds())
    reasons = {name: dict(t.reasons) for name, t in tallies.items()}
    return Result(summary={"metrics": metrics, "per_source": per},
                  manifest={**fields, "lineage": lineage, "errors_by_reason": reasons})


STAGE = Stage("normalize", plan=plan_normalize, work=work, code_packages=("corpus",))


def run(config: NormalizeConfig, *, parent_run_id: str | None = None) -> dict:
    """Normalize every source into `config.output` (the stage contract, treasure.stage); returns
    {output, manifest_id, mlflow_run_id, metrics, per_source, cached}."""
    return STAGE.run(config, parent_run_id=parent_run_id)
