"""Benchmark: rows/s of the rule + metadata annotators through Ray Data vs a plain Python loop,
and of the LLM tagger through Ray Data vs the same engine called directly; ratios from one run.

Run:  RAY_AUTH_MODE=disabled .venv/bin/python benchmarks/annotate_bench.py [--rows 20000] [--batch-sizes 500,2500] [--tagger-rows 16]
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
    """Actor: the cheap annotators (metadata, langid, spaCy lengths, formats) over one batch.

    Loads spaCy pipelines and langid in the constructor (on `warm_rows`), so the first batch is
    not charged for them; records when each batch started and ended, so the benchmark can time
    the steady state (first batch start → last batch end) apart from actor start-up.
    """

    def __init__(self, config: dict, warm_rows: list[dict] | None = None):
        self.cfg = AnnotateConfig.model_validate(config)
        self.taxonomy = load_taxonomy(self.cfg.taxonomy)
        if warm_rows:
            annotate_shard(warm_rows, self.cfg, self.taxonomy, 0)

    def __call__(self, batch):
        t0, c0 = time.time(), time.process_time()
        rows = batch.to_pylist() if hasattr(batch, "to_pylist") else batch.to_dict("records")
        res = annotate_shard(rows, self.cfg, self.taxonomy, 0)
        n = len(rows)
        # process_time: CPU this process got during the batch; below the wall time = it waited for a core.
        return {"id": [r["id"] for r in rows], "n": [len(c) for c in res.candidates],
                "t0": [t0] * n, "t1": [time.time()] * n, "cpu": [time.process_time() - c0] * n, "pid": [os.getpid()] * n}


def load_rows(cfg: AnnotateConfig, n: int) -> list[dict]:
    """`n` rows of the committed corpus (sampled with replacement when n exceeds it; seeded)."""
    manifest = storage.read_manifest(cfg.input)
    files = [storage.join(cfg.input, e["path"]) for e in manifest["files"] if e["path"].startswith("data/")]
    df = pd.concat([pq.read_table(f).to_pandas() for f in files], ignore_index=True)
    return df.sample(n=n, replace=n > len(df), random_state=0).to_dict("records")


def warm_sample(rows: list[dict]) -> list[dict]:
    """A few rows of every language present, so each spaCy pipeline loads before timing."""
    seen: dict = {}
    for r in rows:
        seen.setdefault(r.get("language"), []).append(r)
    return [r for group in seen.values() for r in group[:5]]


_WORKER = None


def _mp_init(config: dict, warm: list[dict]) -> None:
    global _WORKER
    _WORKER = RuleAnnotator(config, warm)


def _mp_call(rows: list[dict]) -> int:
    return len(_WORKER(pd.DataFrame(rows))["id"])


def bench_loop(cfg: AnnotateConfig, rows: list[dict], batch_size: int) -> dict:
    """The plain single-process loop, warm, and the same loop in 2 processes (the 2-core ceiling)."""
    import multiprocessing as mp

    config, warm = cfg.model_dump(mode="json"), warm_sample(rows)
    one = RuleAnnotator(config, warm)
    chunks = [rows[k: k + batch_size] for k in range(0, len(rows), batch_size)]
    t0 = time.perf_counter()
    for chunk in chunks:
        one(pd.DataFrame(chunk))
    loop_s = time.perf_counter() - t0
    # Ceiling: 2 forked processes, warmed in their initializer, fed the same batches (pickled rows).
    with mp.get_context("fork").Pool(2, initializer=_mp_init, initargs=(config, warm)) as pool:
        pool.map(_mp_call, [warm, warm], chunksize=1)  # both workers warm before the clock starts
        t0 = time.perf_counter()
        assert sum(pool.imap_unordered(_mp_call, chunks, chunksize=1)) == len(rows)
        mp_s = time.perf_counter() - t0
    return {"loop_rows_per_s": len(rows) / loop_s, "mp2_rows_per_s": len(rows) / mp_s, "mp2_over_loop": loop_s / mp_s}


def cpu_by_process() -> dict[int, tuple[str, float]]:
    """pid → (short name, CPU seconds so far) of every process on the machine."""
    import psutil

    out = {}
    for p in psutil.process_iter(["name", "cmdline", "cpu_times"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])[:60] or p.info["name"]
            out[p.pid] = (cmd, p.info["cpu_times"].user + p.info["cpu_times"].system)
        except (psutil.NoSuchProcess, psutil.AccessDenied, TypeError, AttributeError):
            continue
    return out


def cpu_spent(before: dict, after: dict, top: int = 6) -> list[tuple[str, float]]:
    """The processes that used the most CPU between two snapshots (seconds)."""
    spent = [(after[pid][0], round(after[pid][1] - before.get(pid, ("", 0.0))[1], 2)) for pid in after]
    return sorted(spent, key=lambda x: -x[1])[:top]


def bench_ray(cfg: AnnotateConfig, rows: list[dict], batch_size: int, batch_format: str, loop_rows_per_s: float,
              actors: int = 2) -> dict:
    """Ray Data, `actors` actors of 1 CPU, blocks of `batch_size` rows: end-to-end and steady-state rows/s."""
    import pyarrow as pa
    import ray

    # One block per batch, built directly (no repartition shuffle), materialized before timing.
    table = pa.Table.from_pandas(pd.DataFrame(rows), preserve_index=False)
    ds = ray.data.from_arrow([table.slice(k, batch_size) for k in range(0, len(rows), batch_size)]).materialize()
    before, t0 = cpu_by_process(), time.time()
    out = ds.map_batches(RuleAnnotator, fn_constructor_kwargs={"config": cfg.model_dump(mode="json"), "warm_rows": warm_sample(rows)},
                         batch_size=batch_size, batch_format=batch_format, concurrency=actors, num_cpus=1).materialize()
    end_to_end_s = time.time() - t0
    spent = cpu_spent(before, cpu_by_process())
    stats = out.to_pandas()
    assert len(stats) == len(rows) and stats["pid"].nunique() <= actors
    per_batch = stats.groupby(["pid", "t0"])[["t1", "cpu"]].first().reset_index()
    steady_s = float(stats["t1"].max() - stats["t0"].min())
    busy_s = float((per_batch["t1"] - per_batch["t0"]).sum())
    return {"actors": actors, "batch_size": batch_size, "batch_format": batch_format, "blocks": len(per_batch),
            "actor_cpu_over_wall": round(float(per_batch["cpu"].sum()) / busy_s, 3),  # < 1: actors waited for a core
            "per_actor_rows_per_s_in_call": round(len(rows) / busy_s, 1),
            "cpu_seconds_top_processes": spent,
            "end_to_end_rows_per_s": len(rows) / end_to_end_s, "steady_rows_per_s": len(rows) / steady_s,
            "startup_s": round(float(stats["t0"].min() - t0), 2),
            "actor_busy_share": round(busy_s / (actors * steady_s), 3),  # 1.0 = no idle gap between batches
            "end_to_end_over_loop": len(rows) / end_to_end_s / loop_rows_per_s,
            "steady_over_loop": len(rows) / steady_s / loop_rows_per_s}


def bench_plain_actors(cfg: AnnotateConfig, rows: list[dict], batch_size: int, loop_rows_per_s: float) -> dict:
    """2 plain Ray actors (no Ray Data), constructed and warm before the clock; the same batches
    round-robin. Separates the cost of running in a Ray worker from Ray Data's batching path."""
    import ray

    actor_cls = ray.remote(num_cpus=1)(RuleAnnotator)
    actors = [actor_cls.remote(cfg.model_dump(mode="json"), warm_sample(rows)) for _ in range(2)]
    ray.get([a.__call__.remote(pd.DataFrame(rows[:2])) for a in actors])  # constructed and warm
    refs = [ray.put(pd.DataFrame(rows[k: k + batch_size])) for k in range(0, len(rows), batch_size)]
    t0 = time.time()
    out = ray.get([actors[i % 2].__call__.remote(ref) for i, ref in enumerate(refs)])
    wall = time.time() - t0
    busy = sum(o["t1"][0] - o["t0"][0] for o in out)
    cpu = sum(o["cpu"][0] for o in out)
    for a in actors:
        ray.kill(a)
    return {"plain_actors": 2, "batch_size": batch_size, "rows_per_s": len(rows) / wall, "over_loop": len(rows) / wall / loop_rows_per_s,
            "per_actor_rows_per_s_in_call": round(len(rows) / busy, 1), "actor_cpu_over_wall": round(cpu / busy, 3)}


def bench_tagger(cfg: AnnotateConfig, rows: list[dict]) -> dict:
    import ray
    from treasure.annotate.tagger import build_prompt, row_text
    from treasure.annotate.tagger_engines import engine_for
    from treasure.annotate.workers import Tagger

    t = cfg.tagger
    taxonomy = load_taxonomy(cfg.taxonomy)
    prompt = build_prompt(taxonomy, "domain", t.prompt_version, definitions=t.definitions, few_shot=t.few_shot)
    engine = engine_for(t)
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
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--batch-sizes", default="500,2500", help="Ray Data block/batch sizes to compare")
    ap.add_argument("--loop-batch-size", type=int, default=500)
    ap.add_argument("--formats", default="pandas,pyarrow", help="Ray Data batch formats to compare")
    ap.add_argument("--actors", default="2", help="actor counts to compare, e.g. 1,2")
    ap.add_argument("--plain-actors", action="store_true", help="also time 2 plain Ray actors without Ray Data")
    ap.add_argument("--tagger-rows", type=int, default=16)
    args = ap.parse_args()
    cfg = load_config(AnnotateConfig, args.config, section="annotate")
    rows = load_rows(cfg, args.rows)
    rules = {"rows": len(rows), "cpus": os.cpu_count(), **bench_loop(cfg, rows, args.loop_batch_size)}  # before Ray: fork is safe
    print(json.dumps(rules, indent=2), flush=True)
    ray.init(num_cpus=2, _node_ip_address="127.0.0.1", include_dashboard=False,
             runtime_env={"env_vars": {"RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")}})
    ray.data.DataContext.get_current().enable_progress_bars = False
    rules["ray"] = []
    for actors in [int(a) for a in args.actors.split(",")]:
        for bs in [int(b) for b in args.batch_sizes.split(",")]:
            for fmt in args.formats.split(","):
                rules["ray"].append(bench_ray(cfg, rows, bs, fmt, rules["loop_rows_per_s"], actors))
                print(json.dumps(rules["ray"][-1]), flush=True)
    if args.plain_actors:
        rules["plain_actors"] = bench_plain_actors(cfg, rows, int(args.batch_sizes.split(",")[-1]), rules["loop_rows_per_s"])
        print(json.dumps(rules["plain_actors"]), flush=True)
    result = {"rules": rules}
    if args.tagger_rows:
        result["tagger"] = bench_tagger(cfg, rows[: args.tagger_rows])
    print(json.dumps(result, indent=2))
