"""The annotate stage's Ray Data shell: shards, resume, errors table, atomic publish.

    run(config) -> {"output", "manifest_id", "mlflow_run_id", "metrics"}

1. Plan shards: row ranges of the committed input's Parquet files (`shard_rows` each).
2. Skip shards already finished under `<output>/_staging/<config hash>/shards/<shard>/`
   (a `done.json` written after the shard's data and errors files).
3. Ray Data: shard specs → read + cheap annotators (tasks) → LLM tagger (`engine: vllm`: Ray Data's
   own LLM processor, `annotate/llm_processor.py`; `transformers`: an actor pool) → quality +
   merge (actor pool) → the driver, which writes each shard when all its rows arrived.
4. Publish: quality_bucket (quartiles per language over all rows), final parts, errors table,
   marker report; check input rows = annotated + error rows and ids unique; manifest last.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from treasure import storage
from treasure.annotate.config import AnnotateConfig
from treasure.annotate.publish import publish
from treasure.annotate.workers import is_missing
from treasure.taxonomy import load_taxonomy

log = logging.getLogger("treasure.annotate")
ERROR_COLUMNS = ["id", "stage", "reason", "raw"]


def config_hash(cfg: AnnotateConfig) -> str:
    """What decides the content of a shard (everything but `force`)."""
    data = cfg.model_dump(mode="json", exclude={"force"})
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


def plan_shards(input_uri: str, manifest: dict, shard_rows: int, max_rows: int) -> list[dict]:
    """Row-range shards over the input's data files, each with its share of the tagger budget."""
    specs = []
    for entry in sorted(manifest["files"], key=lambda e: e["path"]):
        if not entry["path"].startswith("data/"):
            continue
        uri = storage.join(input_uri, entry["path"])
        fs, path = storage.filesystem(uri)
        n = pq.ParquetFile(fs.open_input_file(path)).metadata.num_rows
        stem = entry["path"].rsplit("/", 1)[-1].removesuffix(".parquet")
        for start in range(0, n, shard_rows):
            specs.append({"shard": f"{stem}-{start:09d}", "file": uri, "start": start, "stop": min(n, start + shard_rows)})
    for i, s in enumerate(specs):  # split the tagger's cap evenly, so a shard's choice never depends on others
        s["tag_budget"] = max_rows // len(specs) + (1 if i < max_rows % len(specs) else 0)
    return specs


def shard_dir(cfg: AnnotateConfig, shard: str) -> str:
    return storage.join(cfg.output, "_staging", config_hash(cfg), "shards", shard)


def _write_table(uri: str, df: pd.DataFrame) -> None:
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), sink)
    storage.write_bytes(uri, sink.getvalue().to_pybytes())


def error_rows(rows: list[dict]) -> pd.DataFrame:
    """The errors-table rows: id, stage, reason, raw (row JSON, 2,000 characters at most)."""
    keep = ("id", "source", "prompt", "response", "metadata")
    out = [{"id": r["id"] if isinstance(r["id"], str) else None, "stage": r["_error_stage"], "reason": r["_error"],
            "raw": json.dumps({k: r[k] if isinstance(r[k], str) or r[k] is None else repr(r[k]) for k in keep}, ensure_ascii=False)[:2000]}
           for r in rows if r["_error"] is not None]
    return pd.DataFrame(out, columns=ERROR_COLUMNS).astype(object)


def write_shard(cfg: AnnotateConfig, shard: str, df: pd.DataFrame) -> dict:
    """Data + errors files of one shard, then done.json (last, so a crash never marks a half shard)."""
    base = shard_dir(cfg, shard)
    # Plain records: Ray's pandas batches may carry Arrow-backed columns that boolean masks trip on.
    rows = [{k: (None if is_missing(v) else v) for k, v in r.items()} for r in df.to_dict("records")]
    good = [{k: v for k, v in r.items() if k not in ("_error", "_error_stage", "_shard")} for r in rows if r["_error"] is None]
    errs = error_rows(rows)
    columns = [c for c in df.columns if c not in ("_error", "_error_stage", "_shard")]
    _write_table(storage.join(base, "data.parquet"), pd.DataFrame(good, columns=columns).astype(object))
    _write_table(storage.join(base, "errors.parquet"), errs)
    done = {"shard": shard, "rows": len(good), "error_rows": len(errs), "input_rows": len(rows)}
    storage.write_bytes(storage.join(base, "done.json"), json.dumps(done).encode())
    return done


def read_done(cfg: AnnotateConfig, shard: str) -> dict | None:
    return storage.read_json_or_none(storage.join(shard_dir(cfg, shard), "done.json"), "shard marker")


def check_resources(cfg: AnnotateConfig, cpus: float) -> None:
    """Refuse a plan whose actors would hold every CPU (the read tasks would then wait forever)."""
    need = cfg.rule_num_cpus
    if cfg.tagger.enabled:
        need += cfg.tagger.pool.concurrency * cfg.tagger.pool.num_cpus
    need += cfg.quality.pool.concurrency * cfg.quality.pool.num_cpus
    if need > cpus + 1e-9:
        raise ValueError(
            f"annotate asks for {need} CPUs (rule_num_cpus + tagger.pool + quality.pool) but the cluster has {cpus}; "
            "lower concurrency or num_cpus (fractions are fine)")


def placement_bundles(cfg: AnnotateConfig) -> list[dict[str, float]]:
    """What runs at once: one read + rule task and every actor of each pool, with their placement resources.

    >>> cfg = AnnotateConfig(input="a", output="b", tagger={"enabled": False}, rule_resources={"annotate_node": 0.01},
    ...                      quality={"pool": {"num_cpus": 0.5, "resources": {"annotate_node": 0.01}}})
    >>> placement_bundles(cfg)
    [{'CPU': 0.5, 'annotate_node': 0.01}, {'CPU': 0.5, 'GPU': 0.0, 'annotate_node': 0.01}]
    """
    bundles = [{"CPU": cfg.rule_num_cpus, **cfg.rule_resources}]
    pools = ([cfg.tagger.pool] if cfg.tagger.enabled else []) + [cfg.quality.pool]
    for p in pools:
        bundles += [{"CPU": p.num_cpus, "GPU": p.num_gpus, **p.resources}] * p.concurrency
    return bundles


def build_dataset(cfg: AnnotateConfig, specs: list[dict]):
    import ray

    from treasure.annotate.workers import Finisher, Tagger, read_shard_batch

    config = cfg.model_dump(mode="json")
    # No credentials in task arguments: workers read S3 settings from their own environment or the
    # cloud's credential chain (issue 16 #5), as the driver does.
    ds = ray.data.from_items(specs, override_num_blocks=max(1, len(specs)))
    ds = ds.map_batches(read_shard_batch, batch_size=1, batch_format="pandas", num_cpus=cfg.rule_num_cpus,
                        resources=cfg.rule_resources or None, fn_kwargs={"config": config})
    if cfg.tagger.enabled and any(s["tag_budget"] for s in specs) and cfg.tagger.engine == "vllm":
        from treasure.annotate.llm_processor import tag_with_processor

        ds = tag_with_processor(ds, cfg)  # ray.data.llm's vLLM engine processor
    elif cfg.tagger.enabled and any(s["tag_budget"] for s in specs):
        p = cfg.tagger.pool
        ds = ds.map_batches(Tagger, fn_constructor_kwargs={"config": config}, batch_size=p.batch_size, batch_format="pandas",
                            concurrency=p.concurrency, num_cpus=p.num_cpus, num_gpus=p.num_gpus, resources=p.resources or None)
    q = cfg.quality.pool
    return ds.map_batches(Finisher, fn_constructor_kwargs={"config": config}, batch_size=q.batch_size, batch_format="pandas",
                          concurrency=q.concurrency, num_cpus=q.num_cpus, num_gpus=q.num_gpus, resources=q.resources or None)


def annotate_shards(cfg: AnnotateConfig, todo: list[dict], crash_after_shards: int | None = None) -> int:
    """Run the Ray Data pipeline over unfinished shards; the driver writes each shard as it completes."""
    import ray

    from treasure.cluster import check_placement

    check_resources(cfg, ray.cluster_resources().get("CPU", 0))
    # Pinned pools (custom resources) must fit the nodes that offer them, or Ray waits forever.
    check_placement(placement_bundles(cfg), "annotate tasks and actors",
                    "lower the pools' concurrency / num_cpus, or start nodes with the resources they name")
    expected = {s["shard"]: s["stop"] - s["start"] for s in todo}
    pending: dict[str, list[pd.DataFrame]] = {}
    written, t0 = 0, time.monotonic()
    for batch in build_dataset(cfg, todo).iter_batches(batch_size=None, batch_format="pandas"):
        for shard, part in batch.groupby("_shard", sort=False):
            pending.setdefault(shard, []).append(part)
            if sum(len(p) for p in pending[shard]) < expected[shard]:
                continue
            done = write_shard(cfg, shard, pd.concat(pending.pop(shard), ignore_index=True))
            written += 1
            print(f"annotate: shard {shard} done ({written}/{len(todo)} shards this run, {done['rows']} rows, "
                  f"{done['error_rows']} errors, {time.monotonic() - t0:.0f}s)", flush=True)
            if crash_after_shards is not None and written >= crash_after_shards:
                raise RuntimeError(f"simulated crash after {written} shards")
    if pending:
        raise RuntimeError(f"shards with missing rows after the pipeline ended: {sorted(pending)}")
    return written


def run(config: AnnotateConfig, *, parent_run_id: str | None = None, crash_after_shards: int | None = None) -> dict:
    """Annotate `config.input` into `config.output` (see module docstring); idempotent per config."""
    from treasure import tracking

    cfg = config
    committed = storage.read_manifest(cfg.output)
    if committed and not cfg.force and committed.get("config") == cfg.model_dump(mode="json"):
        return {**committed["summary"], "manifest_id": committed["manifest_id"]}
    source = storage.read_manifest(cfg.input)
    if source is None:
        raise FileNotFoundError(f"{cfg.input} has no committed manifest: run the normalize stage first")
    taxonomy = load_taxonomy(cfg.taxonomy)
    validate_mapping(cfg, taxonomy)
    specs = plan_shards(cfg.input, source, cfg.shard_rows, cfg.tagger.max_rows if cfg.tagger.enabled else 0)
    lineage = {"input": cfg.input, "input_manifest_id": source["manifest_id"], "output": cfg.output}
    with tracking.run(cfg.experiment, "annotate", config=cfg, taxonomy=taxonomy, lineage=lineage, parent_run_id=parent_run_id) as active:
        t0 = time.monotonic()
        todo = [s for s in specs if read_done(cfg, s["shard"]) is None]
        print(f"annotate: {len(specs)} shards, {len(specs) - len(todo)} already done, {len(todo)} to run", flush=True)
        if committed:  # un-commit the old output before any of its files is replaced
            storage.delete(storage.join(cfg.output, storage.MANIFEST))
        ran = annotate_shards(cfg, todo, crash_after_shards) if todo else 0
        summary = publish(cfg, taxonomy, specs, source, active.info.run_id,
                          {"shards": len(specs), "shards_run": ran, "shards_skipped": len(specs) - len(todo),
                           "seconds": round(time.monotonic() - t0, 2)})
    return summary


def validate_mapping(cfg: AnnotateConfig, taxonomy) -> None:
    """Every marker the metadata mapping can emit must be allowed by the taxonomy (fail before any work)."""
    for source, spec in cfg.metadata.items():
        tables = [spec.markers] + [m for field in spec.fields.values() for m in field.values()]
        for markers in tables:
            try:
                taxonomy.validate_markers(markers)
            except ValueError as e:
                raise ValueError(f"annotate.metadata.{source}: {e}") from None
