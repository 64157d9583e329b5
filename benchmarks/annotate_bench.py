"""Benchmark: rows/s of the rule + metadata annotators through Ray Data vs a plain Python loop,
and of the LLM tagger through Ray Data vs the same engine called directly; ratios from one run.

Run:  RAY_AUTH_MODE=disabled .venv/bin/python benchmarks/annotate_bench.py [--rows 4000] [--tagger-rows 16]
Input: the committed demo corpus (runs/demo/normalized; run the normalize stage first).
"""

import argparse
import json
import os
import time

import pandas as pd
import pyarrow.parquet as pq

from treasure import storage
from treasure.annotate.annotators import annotate_shard
from treasure.annotate.config import AnnotateConfig
from treasure.config import load_config
from treasure.taxonomy import load_taxonomy


class RuleAnnotator:
    """Actor: the cheap annotators (metadata, langid, spaCy lengths, formats) over a pandas batch."""

    def __init__(self, config: dict):
        self.cfg = AnnotateConfig.model_validate(config)
        self.taxonomy = load_taxonomy(self.cfg.taxonomy)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        res = annotate_shard(batch.to_dict("records"), self.cfg, self.taxonomy, 0)
        return pd.DataFrame({"id": batch["id"], "n": [len(c) for c in res.candidates]})


def load_rows(cfg: AnnotateConfig, n: int) -> list[dict]:
    manifest = storage.read_manifest(cfg.input)
    files = [storage.join(cfg.input, e["path"]) for e in manifest["files"] if e["path"].startswith("data/")]
    df = pd.concat([pq.read_table(f).to_pandas() for f in files], ignore_index=True)
    return df.sample(n=min(n, len(df)), random_state=0).to_dict("records")


def bench_rules(cfg: AnnotateConfig, rows: list[dict], batch_size: int) -> dict:
    import ray

    warm = RuleAnnotator(cfg.model_dump(mode="json"))
    warm(pd.DataFrame(rows[:50]))  # load spaCy/langid once before timing
    t0 = time.perf_counter()
    for k in range(0, len(rows), batch_size):
        warm(pd.DataFrame(rows[k: k + batch_size]))
    loop_s = time.perf_counter() - t0
    ds = ray.data.from_pandas(pd.DataFrame(rows)).repartition(len(rows) // batch_size).materialize()
    t0 = time.perf_counter()
    out = ds.map_batches(RuleAnnotator, fn_constructor_kwargs={"config": cfg.model_dump(mode="json")},
                         batch_size=batch_size, batch_format="pandas", concurrency=2, num_cpus=1).count()
    ray_s = time.perf_counter() - t0
    assert out == len(rows)
    return {"rows": len(rows), "loop_rows_per_s": len(rows) / loop_s, "ray_rows_per_s": len(rows) / ray_s,
            "ray_over_loop": loop_s / ray_s, "note": "ray time includes actor start-up (spaCy, langid load)"}


def bench_tagger(cfg: AnnotateConfig, rows: list[dict]) -> dict:
    import ray

    from treasure.annotate.tagger import build_prompt, row_text
    from treasure.annotate.tagger_engines import load_engine
    from treasure.annotate.workers import Tagger

    t = cfg.tagger
    taxonomy = load_taxonomy(cfg.taxonomy)
    prompt = build_prompt(taxonomy, "domain", t.prompt_version)
    engine = load_engine(t.engine, t.model, t.max_new_tokens)
    texts = [row_text(prompt, r, t.max_prompt_chars) for r in rows]
    engine.answer(prompt, texts[:1], t.mode)  # prefix cache built once, as in the actor
    t0 = time.perf_counter()
    engine.answer(prompt, texts, t.mode)
    raw_s = time.perf_counter() - t0
    del engine
    config = cfg.model_copy(update={"tagger": t.model_copy(update={"categories": ["domain"]})}).model_dump(mode="json")
    df = pd.DataFrame(rows).assign(_cands="[]", _to_tag=json.dumps(["domain"]), _error=None, _error_stage=None)
    ds = ray.data.from_pandas(df).materialize()
    # Warm: the actor loads the model and caches the prefix on its first batch; time the steady state.
    actor_cls = ray.remote(num_cpus=t.pool.num_cpus)(Tagger)
    actor = actor_cls.remote(config)
    ray.get(actor.__call__.remote(df.head(1)))
    t0 = time.perf_counter()
    ray.get(actor.__call__.remote(df))
    actor_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    n = ds.map_batches(Tagger, fn_constructor_kwargs={"config": config}, batch_size=t.pool.batch_size, batch_format="pandas",
                       concurrency=1, num_cpus=t.pool.num_cpus).count()
    ray_data_s = time.perf_counter() - t0
    assert n == len(rows)
    return {"engine": f"{t.engine}/{t.mode}", "model": t.model, "rows": len(rows), "raw_rows_per_s": len(rows) / raw_s,
            "actor_rows_per_s": len(rows) / actor_s, "ray_data_rows_per_s_incl_load": len(rows) / ray_data_s,
            "actor_over_raw": raw_s / actor_s, "ray_data_incl_load_over_raw": raw_s / ray_data_s}


if __name__ == "__main__":
    import ray

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="pipelines/configs/demo.yaml")
    ap.add_argument("--rows", type=int, default=4000)
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--tagger-rows", type=int, default=16)
    args = ap.parse_args()
    cfg = load_config(AnnotateConfig, args.config, section="annotate")
    ray.init(num_cpus=2, _node_ip_address="127.0.0.1", include_dashboard=False,
             runtime_env={"env_vars": {"RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")}})
    rows = load_rows(cfg, args.rows)
    result = {"rules": bench_rules(cfg, rows, args.batch_size)}
    print(json.dumps(result, indent=2), flush=True)
    if args.tagger_rows:
        result["tagger"] = bench_tagger(cfg, rows[: args.tagger_rows])
    print(json.dumps(result, indent=2))
