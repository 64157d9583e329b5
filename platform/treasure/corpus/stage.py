"""The normalize stage: read every source on Ray Data, normalize, publish Parquet + manifest, log to MLflow.

Library entry point `run(config)` (see notes in docs/data-formats.md, normalize section):

    <output>/data/part-*.parquet     id, prompt, response, source, language, metadata (JSON string)
    <output>/errors/part-*.parquet   source, record, reason, raw
    <output>/manifest.json           written last: counts per source, lineage, config, MLflow run id

Reading streams: every input file (and every bundled source) is a unit read and checked by a Ray
Data task (`treasure.corpus.units`), in parallel, with outputs in plan order; the driver keeps
only ids (dedup and the `max_rows` sample), appends rows to staged Parquet parts as they arrive,
and accounts for every record exactly once. Memory grows with the row count by one id per row,
not with the text. Files are written under `_staging/<attempt>/` first, copied into place, and
trusted only once the manifest is committed; the old manifest is removed before anything is
copied, so a crash never leaves a mix of old and new files published as complete. A committed
output made by the same config and the same code of this package is returned as is (`force: true`
recomputes).
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from treasure import storage, tracking
from treasure.corpus.config import NormalizeConfig
from treasure.corpus.length_variants import answer_words, derive
from treasure.corpus.normalize import Tally
from treasure.corpus.schema import ERROR_SCHEMA, ROW_SCHEMA
from treasure.corpus.units import plan, unit_tables


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


def collect(config: NormalizeConfig, staging: str) -> tuple[dict[str, Tally], dict, list[str], dict[str, list[str]]]:
    """Read every unit into `staging`: unique rows per source (`unique/<source>/`), error rows
    (`errors/`); returns (tallies, lineage, error part URIs, unique part URIs per source)."""
    units = plan(config)
    enabled = [name for name, cfg in config.sources.items() if cfg.enabled]
    tallies = {name: Tally(name, config.sources[name].max_rows, config.seed) for name in enabled}
    lineage: dict = {"input": config.input, "sources": {name: {} for name in enabled}}
    errors = PartWriter(storage.join(staging, "errors"), ERROR_SCHEMA, config.rows_per_file)
    unique = {name: PartWriter(storage.join(staging, "unique", name), ROW_SCHEMA, 100_000) for name in enabled}
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


def publish(config: NormalizeConfig, staging: str, staged: list[str], per: dict[str, dict], extra: dict) -> dict:
    """Copy the staged data and error parts into place, commit the manifest last; returns the manifest."""
    out = config.output
    for stale in ("manifest.json", "data", "errors"):  # the manifest goes first
        storage.delete(storage.join(out, stale))
    fs, _ = storage.filesystem(out)
    final = []
    for uri in staged:
        target = storage.join(out, uri[len(staging) + 1:])
        fs.create_dir(storage.filesystem(target)[1].rsplit("/", 1)[0], recursive=True)
        fs.copy_file(storage.filesystem(uri)[1], storage.filesystem(target)[1])
        final.append(target)
    storage.delete(storage.join(out, "_staging"))
    rows = sum(c["rows"] for c in per.values())  # kept records + derived variants
    manifest_extra = {
        "stage": "normalize", "rows": rows, "error_rows": sum(c["errors"] for c in per.values()),
        "rows_per_source": {s: c["rows"] for s, c in per.items()},
        "errors_per_source": {s: c["errors"] for s, c in per.items()},
        "duplicates_per_source": {s: c["duplicates"] for s, c in per.items()},
        "capped_per_source": {s: c["capped"] for s, c in per.items()},
        "records_per_source": {s: c["records"] for s, c in per.items()},
        "duplicates": sum(c["duplicates"] for c in per.values()),
        "source_stats": per, "config": config_record(config), "code_version": code_version(), **extra,
    }
    return storage.commit_manifest(out, final, manifest_extra)


def config_record(config: NormalizeConfig) -> dict:
    """The config as recorded in the manifest (`force` changes how, not what, so it is left out)."""
    return config.model_dump(mode="json", exclude={"force"})


def code_version() -> str:
    """Hash of this package's source: a cached result is reused only if the code that made it is the same."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def summary(manifest: dict, output: str, cached: bool) -> dict:
    metrics = {"rows": manifest["rows"], "error_rows": manifest["error_rows"], "duplicates": manifest["duplicates"],
               "records": sum(manifest["records_per_source"].values()),
               "capped": sum(manifest["capped_per_source"].values())}
    return {"output": output, "manifest_id": manifest["manifest_id"], "mlflow_run_id": manifest.get("mlflow_run_id"),
            "metrics": metrics, "per_source": manifest["source_stats"], "cached": cached}


def run(config: NormalizeConfig, *, parent_run_id: str | None = None) -> dict:
    """Normalize every source into `config.output`; returns {output, manifest_id, mlflow_run_id, metrics, ...}."""
    existing = storage.read_manifest(config.output)
    same = existing and existing.get("config") == config_record(config) and existing.get("code_version") == code_version()
    if same and not config.force:
        storage.verify_manifest(config.output, existing)
        return summary(existing, config.output, cached=True)
    import mlflow

    started = time.perf_counter()
    staging = storage.join(config.output, "_staging", uuid.uuid4().hex[:12])
    storage.delete(storage.join(config.output, "_staging"))  # a crashed attempt's files: never trusted
    tallies, lineage, error_parts, unique = collect(config, staging)
    data_parts = finish_rows(config, tallies, unique, storage.join(staging, "data"))
    per = {}
    for name, tally in tallies.items():
        per[name] = tally.counts()  # raises unless every record is accounted for
        per[name]["rows"] += per[name].get("derived", 0)  # rows = kept records + derived variants
    with tracking.run(config.experiment, "normalize", config=config, lineage=lineage,
                      parent_run_id=parent_run_id, tags={"stage": "normalize"}) as active:
        reasons = {name: dict(t.reasons) for name, t in tallies.items()}
        manifest = publish(config, staging, data_parts + error_parts, per,
                           {"mlflow_run_id": active.info.run_id, "lineage": lineage, "errors_by_reason": reasons})
        for name, counts in per.items():
            mlflow.log_metrics({f"{name}.{k}": float(v) for k, v in counts.items()})
        out = summary(manifest, config.output, cached=False)
        mlflow.log_metrics({k: float(v) for k, v in out["metrics"].items()})
        mlflow.log_metric("seconds", time.perf_counter() - started)
        mlflow.log_dict(manifest, "normalize/manifest.json")
        mlflow.set_tag("manifest_id", manifest["manifest_id"])
    return out
