"""The annotate stage's Ray Data shell: shards, resume, errors table, atomic publish.

    run(config) -> {"output", "manifest_id", "mlflow_run_id", "metrics"}

1. Plan shards: row ranges of the committed input's Parquet files (`shard_rows` each).
2. Skip shards already finished under `<output>/_staging/<config key>/shards/<shard>/`
   (a `done.json` written after the shard's data and errors files; treasure.annotate.shards).
3. Ray Data: shard specs → read + cheap annotators (tasks) → LLM tagger (`engine: vllm`: Ray Data's
   own LLM processor, `annotate/llm_processor.py`; `transformers`: an actor pool; `distilled`: the
   student trained first on teacher labels, annotate/student.py, on an actor pool) → quality +
   merge (actor pool) → the driver, which writes each shard when all its rows arrived.
4. Publish (annotate/publish.py): quality_bucket (quartiles per language over all rows), final
   parts, errors table, marker report into the attempt's staging; check input rows = annotated +
   error rows and ids unique. The stage contract (treasure.stage) moves them into place and
   commits the manifest last.
"""

from __future__ import annotations

import logging
import time

import pandas as pd

from treasure import storage
from treasure.annotate.config import AnnotateConfig
from treasure.annotate.publish import publish
from treasure.annotate.shards import plan_shards, read_done, write_shard
from treasure.resources import Pool, check_pools
from treasure.stage import Attempt, Plan, Result, Stage
from treasure.taxonomy import load_taxonomy

log = logging.getLogger("treasure.annotate")


def pools(cfg: AnnotateConfig) -> dict[str, Pool]:
    """The Ray pools that run at once: the read + rule tasks, the tagger's actors (when it runs on
    an actor pool) and the quality actors.

    >>> cfg = AnnotateConfig(input="a", output="b", tagger={"enabled": False},
    ...                      rules={"pool": {"count": None, "num_cpus": 0.5, "resources": {"annotate_node": 0.01}}},
    ...                      quality={"pool": {"num_cpus": 0.5, "resources": {"annotate_node": 0.01}}})
    >>> [p.bundle() for p in pools(cfg).values()]
    [{'CPU': 0.5, 'annotate_node': 0.01}, {'CPU': 0.5, 'annotate_node': 0.01}]
    """
    out = {"annotate.rules.pool": cfg.rules.pool}
    if cfg.tagger.enabled:
        out["annotate.tagger.pool"] = cfg.tagger.pool
    out["annotate.quality.pool"] = cfg.quality.pool
    return out


def build_dataset(cfg: AnnotateConfig, specs: list[dict]):
    import ray

    from treasure.annotate.workers import Finisher, Tagger, read_shard_batch

    config = cfg.model_dump(mode="json")
    # No credentials in task arguments: workers read S3 settings from their own environment or the
    # cloud's credential chain (issue 16 #5), as the driver does.
    ds = ray.data.from_items(specs, override_num_blocks=max(1, len(specs)))
    r = cfg.rules.pool
    ds = ds.map_batches(read_shard_batch, batch_size=1, batch_format="pandas", fn_kwargs={"config": config},
                        **({"concurrency": r.count} if r.count else {}), **r.ray_options())
    if cfg.tagger.enabled and any(s["tag_budget"] for s in specs) and cfg.tagger.engine == "vllm":
        from treasure.annotate.llm_processor import tag_with_processor

        ds = tag_with_processor(ds, cfg)  # ray.data.llm's vLLM engine processor
    elif cfg.tagger.enabled and any(s["tag_budget"] for s in specs) and cfg.tagger.engine == "distilled":
        from treasure.annotate.student import DistilledTagger

        p = cfg.tagger.pool  # the student trained by prepare_student (work, below) before the shards run
        ds = ds.map_batches(DistilledTagger, fn_constructor_kwargs={"config": config}, batch_size=cfg.tagger.batch_size,
                            batch_format="pandas", concurrency=p.count, **p.ray_options())
    elif cfg.tagger.enabled and any(s["tag_budget"] for s in specs):
        p = cfg.tagger.pool
        ds = ds.map_batches(Tagger, fn_constructor_kwargs={"config": config}, batch_size=cfg.tagger.batch_size,
                            batch_format="pandas", concurrency=p.count, **p.ray_options())
    q = cfg.quality.pool
    return ds.map_batches(Finisher, fn_constructor_kwargs={"config": config}, batch_size=cfg.quality.batch_size,
                          batch_format="pandas", concurrency=q.count, **q.ray_options())


def annotate_shards(cfg: AnnotateConfig, todo: list[dict], crash_after_shards: int | None = None) -> int:
    """Run the Ray Data pipeline over unfinished shards; the driver writes each shard as it completes."""
    # The actors hold their CPUs for the whole run: if they left none for a read task, it would wait forever.
    check_pools(pools(cfg), "lower the pools' count / num_cpus (fractions are fine), or start nodes with the "
                            "resources they name")
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


def plan_annotate(cfg: AnnotateConfig) -> Plan:
    """The input's manifest, the taxonomy and the shard plan; the metadata mapping checked."""
    source = storage.read_manifest(cfg.input)
    if source is None:
        raise FileNotFoundError(f"{cfg.input} has no committed manifest: run the normalize stage first")
    taxonomy = load_taxonomy(cfg.taxonomy)
    validate_mapping(cfg, taxonomy)
    specs = plan_shards(cfg.input, source, cfg.shard_rows, cfg.tagger.max_rows if cfg.tagger.enabled else 0)
    lineage = {"input": cfg.input, "input_manifest_id": source["manifest_id"], "output": cfg.output}
    return Plan(run_name="annotate", taxonomy=taxonomy, lineage=lineage, state={"specs": specs, "source": source})


def work(cfg: AnnotateConfig, plan: Plan, attempt: Attempt, crash_after_shards: int | None = None) -> Result:
    """Annotate the shards not finished by an earlier attempt, then publish every shard's rows."""
    specs, source = plan.state["specs"], plan.state["source"]
    todo = [s for s in specs if read_done(cfg, s["shard"]) is None]
    print(f"annotate: {len(specs)} shards, {len(specs) - len(todo)} already done, {len(todo)} to run", flush=True)
    if cfg.tagger.enabled and cfg.tagger.engine == "distilled":
        from treasure.annotate.student import prepare_student

        prepare_student(cfg, plan, attempt)  # teacher labels → student (a Ray task), kept for resumed attempts
    ran = annotate_shards(cfg, todo, crash_after_shards) if todo else 0
    return publish(cfg, plan.taxonomy, specs, source, attempt,
                   {"shards": len(specs), "shards_run": ran, "shards_skipped": len(specs) - len(todo)})


STAGE = Stage("annotate", plan=plan_annotate, work=work)


def run(config: AnnotateConfig, *, parent_run_id: str | None = None, crash_after_shards: int | None = None) -> dict:
    """Annotate `config.input` into `config.output` (see module docstring; the stage contract,
    treasure.stage, owns reuse, staging and the manifest)."""
    return STAGE.run(config, parent_run_id=parent_run_id, crash_after_shards=crash_after_shards)


def validate_mapping(cfg: AnnotateConfig, taxonomy) -> None:
    """Every marker the metadata mapping can emit must be allowed by the taxonomy (fail before any work)."""
    for source, spec in cfg.metadata.items():
        tables = [spec.markers] + [m for field in spec.fields.values() for m in field.values()]
        for markers in tables:
            try:
                taxonomy.validate_markers(markers)
            except ValueError as e:
                raise ValueError(f"annotate.metadata.{source}: {e}") from None
