"""The normalize stage: read every source, normalize, publish Parquet + manifest, log to MLflow.

Library entry point `run(config)` (see notes in docs/data-formats.md, normalize section):

    <output>/data/part-*.parquet     id, prompt, response, source, language, metadata (JSON string)
    <output>/errors/part-*.parquet   source, record, reason, raw
    <output>/manifest.json           written last: counts per source, lineage, config, MLflow run id

The corpus is small (thousands of rows), so this stage is one plain process: no Ray. Files are
written under `_staging/<attempt>/` first, copied into place, and trusted only once the manifest
is committed; the old manifest is removed before anything else is touched, so a crash never leaves
a mix of old and new files published as complete. A committed output made by the same config and
the same code of this package is returned as is (`force: true` recomputes).
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from treasure import storage, tracking
from treasure.corpus.config import NormalizeConfig
from treasure.corpus.length_variants import answer_words, derive
from treasure.corpus.normalize import SourceResult, normalize_source
from treasure.corpus.schema import ERROR_SCHEMA, ROW_SCHEMA
from treasure.corpus.sources import SourceInput, read_alpaca_zh, read_arena_hard, read_file_source, read_self_instruct


def read_source(cfg, root: str, seed: int) -> SourceInput:
    """Dispatch on the source's `type` to its reader (or generator)."""
    if cfg.type == "chitchat":
        from treasure.corpus.chitchat import read_chitchat

        return read_chitchat(cfg, root)
    if cfg.type == "mathematics":
        from treasure.corpus.mathematics import generate

        return generate(cfg, seed)
    readers = {"arena-hard": read_arena_hard, "alpaca-zh": read_alpaca_zh,
               "self-instruct": read_self_instruct, "file": read_file_source}
    return readers[cfg.type](cfg, root)


def collect(config: NormalizeConfig) -> tuple[list[SourceResult], dict]:
    """Every enabled source normalized, in config order, and the lineage of what was read."""
    results, lineage = [], {"input": config.input, "sources": {}}
    for name, cfg in config.sources.items():
        if not cfg.enabled:
            continue
        started = time.perf_counter()
        read = read_source(cfg, config.input, config.seed)
        result = normalize_source(name, read.items, cfg.max_rows, config.seed, read.stats)
        if name in config.length_variants.sources:
            variants = derive(result.rows, config.length_variants.budgets, config.length_variants.min_words, answer_words)
            result.rows += variants
            result.stats["derived"] = len(variants)  # rows = kept records + derived variants
        result.stats["seconds"] = round(time.perf_counter() - started, 2)
        results.append(result)
        lineage["sources"][name] = read.lineage
    return results, lineage


def write_parts(rows: list[dict], schema: pa.Schema, folder: str, rows_per_file: int) -> list[str]:
    """Rows as Parquet part files under `folder` (at least one file, even when empty)."""
    fs, path = storage.filesystem(folder)
    fs.create_dir(path, recursive=True)
    uris = []
    for part, start in enumerate(range(0, max(len(rows), 1), rows_per_file)):
        uri = storage.join(folder, f"part-{part:05d}.parquet")
        with fs.open_output_stream(storage.filesystem(uri)[1]) as f:
            pq.write_table(pa.Table.from_pylist(rows[start: start + rows_per_file], schema=schema), f)
        uris.append(uri)
    return uris


def publish(config: NormalizeConfig, results: list[SourceResult], extra: dict) -> dict:
    """Stage, copy into place, commit the manifest last; returns the manifest."""
    out = config.output
    for stale in ("manifest.json", "data", "errors", "_staging"):  # the manifest goes first
        storage.delete(storage.join(out, stale))
    staging = storage.join(out, "_staging", uuid.uuid4().hex[:12])
    rows = [r for res in results for r in res.rows]
    errors = [e for res in results for e in res.errors]
    staged = (write_parts(rows, ROW_SCHEMA, storage.join(staging, "data"), config.rows_per_file)
              + write_parts(errors, ERROR_SCHEMA, storage.join(staging, "errors"), config.rows_per_file))
    fs, _ = storage.filesystem(out)
    final = []
    for uri in staged:
        target = storage.join(out, uri[len(staging) + 1:])
        fs.create_dir(storage.filesystem(target)[1].rsplit("/", 1)[0], recursive=True)
        fs.copy_file(storage.filesystem(uri)[1], storage.filesystem(target)[1])
        final.append(target)
    storage.delete(storage.join(out, "_staging"))
    per = {res.source: res.counts() for res in results}
    manifest_extra = {
        "stage": "normalize", "rows": len(rows), "error_rows": len(errors),
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


def errors_by_reason(results: list[SourceResult]) -> dict[str, dict[str, int]]:
    """{source: {reason kind: count}}; a reason's kind is its text before the first ':'."""
    return {res.source: dict(Counter(e["reason"].split(":")[0] for e in res.errors)) for res in results}


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
    results, lineage = collect(config)
    with tracking.run(config.experiment, "normalize", config=config, lineage=lineage,
                      parent_run_id=parent_run_id, tags={"stage": "normalize"}) as active:
        reasons = errors_by_reason(results)
        manifest = publish(config, results, {"mlflow_run_id": active.info.run_id, "lineage": lineage,
                                             "errors_by_reason": reasons})
        for res in results:
            mlflow.log_metrics({f"{res.source}.{k}": float(v) for k, v in res.counts().items()})
        out = summary(manifest, config.output, cached=False)
        mlflow.log_metrics({k: float(v) for k, v in out["metrics"].items()})
        mlflow.log_metric("seconds", time.perf_counter() - started)
        mlflow.log_dict(manifest, "normalize/manifest.json")
        mlflow.set_tag("manifest_id", manifest["manifest_id"])
    return out
