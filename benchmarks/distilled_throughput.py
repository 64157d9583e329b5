"""Distilled tagger throughput: the stage's own actor class (`annotate.student.DistilledTagger`: MiniLM embedding +
heads + candidates) through Ray Data vs the same class in a plain loop, in rows/s per CPU core, side by side.

Run:  RAY_AUTH_MODE=disabled .venv/bin/python benchmarks/distilled_throughput.py [--rows 8000] [--actors 2]
                                        [--batch-size 256] [--config pipelines/configs/demo.yaml] [overrides]
Rows: sampled with replacement (seed 0) from the committed normalized corpus of the config, every row asking
for domain and task (the worst case: no row settled by metadata). The student is trained first on the
config's metadata teacher (a few seconds; not timed). Arms, in one process, one after the other:
- **loop**: one `DistilledTagger` in this process, torch with 1 thread, warmed on one batch; one core.
- **plain processes** (the ceiling): `--actors` spawned processes without Ray, each the loop over its share of
  the batches, timed from a common start after loading: what that many cores do here without Ray.
- **Ray Data**: `map_batches(DistilledTagger)` (a subclass that only records times) over a materialized dataset of one block per batch,
  `--actors` actors of 1 CPU each (torch 1 thread each); *end-to-end* = map_batches to the materialized
  output, actor start and model load included; *steady* = first batch start to last batch end,
  recorded inside the actors (actor start excluded). Per core = rows/s / actors.
Prints rows/s, rows/s per core and the ratios Ray Data / loop per core; and rows per CPU-second of the loop
and of the actors' calls, which a busy machine distorts less than wall-clock rates.
"""

import argparse
import glob
import os
import tempfile
import time

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from treasure import storage
from treasure.annotate.config import AnnotateConfig
from treasure.annotate.distilled import fit_student, merge_examples, metadata_examples, student_text
from treasure.annotate.student import STUDENT_FILES, DistilledTagger, student_dir, student_encoder
from treasure.config import load_config


class TimedTagger(DistilledTagger):
    """The stage's actor, recording when each batch started and ended (wall clock, for the steady interval)."""

    def __call__(self, batch):
        t0, c0 = time.time(), time.process_time()
        out = super().__call__(batch)
        return out.assign(_t0=t0, _t1=time.time(), _cpu=(time.process_time() - c0) / len(batch))


def plain_process(config: dict, chunks: list, barrier, out) -> None:
    """One plain process (no Ray) of the ceiling arm: load, wait for the others, tag its batches, report."""
    import torch

    torch.set_num_threads(1)
    tagger = DistilledTagger(config)
    tagger(chunks[0])  # warm
    barrier.wait()
    t0, c0 = time.time(), time.process_time()
    for b in chunks:
        tagger(b)
    out.put((t0, time.time(), time.process_time() - c0, sum(len(b) for b in chunks)))


def plain_processes(config: dict, chunks: list, n: int) -> tuple[float, float]:
    """(rows/s, rows per CPU-second) of n plain processes sharing the batches: what n cores do without Ray."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=plain_process, args=(config, chunks[k::n], barrier, out)) for k in range(n)]
    for p in procs:
        p.start()
    got = [out.get() for _ in procs]
    for p in procs:
        p.join()
    wall = max(g[1] for g in got) - min(g[0] for g in got)
    rows = sum(g[3] for g in got)
    return rows / wall, rows / sum(g[2] for g in got)


def batches(rows: pd.DataFrame, size: int) -> list[pd.DataFrame]:
    return [rows.iloc[i:i + size].reset_index(drop=True) for i in range(0, len(rows), size)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="pipelines/configs/demo.yaml")
    ap.add_argument("--rows", type=int, default=8000)
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("overrides", nargs="*", help="annotate config overrides, e.g. tagger.distilled.layers=last")
    args = ap.parse_args()

    import ray
    import torch

    out = tempfile.mkdtemp(prefix="distilled-bench-")
    cfg = load_config(AnnotateConfig, args.config, [f"output={out}", "tagger.engine=distilled", "tagger.pool.num_cpus=1",
                                                    "tagger.categories=[domain,task]", *args.overrides], section="annotate")
    corpus = pd.concat([pq.read_table(p, columns=["id", "prompt", "source", "metadata"]).to_pandas()
                        for p in sorted(glob.glob(f"{cfg.input}/data/*.parquet"))], ignore_index=True)
    # The student: trained on the metadata teacher (not timed; the benchmark is about applying it).
    torch.set_num_threads(1)

    d = cfg.tagger.distilled
    examples = merge_examples(metadata_examples(corpus.to_dict("records"), cfg.metadata, cfg.tagger.categories))[:600]
    enc = student_encoder(d)
    X = enc.encode([student_text({"prompt": e.text}, cfg.tagger.max_prompt_chars) for e in examples])
    files = fit_student(X, examples, cfg.tagger.categories, encoder=enc.describe()).to_files()
    # No teacher_labels.jsonl: no row is settled by a teacher's own label, so the student answers every row.
    for name in STUDENT_FILES:
        if name in files:
            storage.write_bytes(storage.join(student_dir(cfg), name), files[name])

    rng = np.random.default_rng(0)
    rows = corpus.iloc[rng.integers(0, len(corpus), args.rows)].reset_index(drop=True)
    rows = rows.assign(_cands="[]", _to_tag='["domain", "task"]', _error=None, _error_stage=None)
    rows["id"] = [f"r{i}" for i in range(len(rows))]
    config = cfg.model_dump(mode="json")
    chunks = batches(rows, args.batch_size)
    tokens = np.mean([len(t) for t in enc.tokenizer([student_text(r, cfg.tagger.max_prompt_chars) for r in rows.head(2000).to_dict("records")],
                                                      truncation=True, max_length=d.max_tokens)["input_ids"]])
    print(f"rows {len(rows)} (batches of {args.batch_size}); encoder {d.encoder} {enc.dtype}, max_tokens {d.max_tokens}, layers {enc.layers} "
          f"(mean {tokens:.1f} tokens a row); load average {os.getloadavg()[0]:.1f}", flush=True)

    # Loop arm: the same class, this process, one thread.
    tagger = DistilledTagger(config)
    tagger(chunks[0])  # warm
    t0, c0 = time.perf_counter(), time.process_time()
    for b in chunks:
        tagger(b)
    loop_s, loop_cpu = time.perf_counter() - t0, time.process_time() - c0
    loop = len(rows) / loop_s
    print(f"loop: {loop_s:.1f}s, {loop:.0f} rows/s on 1 core (CPU/wall {loop_cpu / loop_s:.2f}); "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)

    plain, plain_cpu = plain_processes(config, chunks, args.actors)
    print(f"plain processes, {args.actors} (the ceiling on this machine, no Ray): {plain:.0f} rows/s "
          f"({plain / args.actors:.0f} per core, {plain / args.actors / loop:.2f}x the loop); {plain_cpu:.0f} rows per CPU-second",
          flush=True)

    ray.init(num_cpus=args.actors, _node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False)
    ds = ray.data.from_pandas(chunks).materialize()  # one block per batch: no repartition in the timed part
    t0 = time.time()
    res = ds.map_batches(TimedTagger, fn_constructor_kwargs={"config": config}, batch_size=args.batch_size,
                         batch_format="pandas", concurrency=args.actors, num_cpus=1).materialize().to_pandas()
    e2e_s = time.time() - t0
    steady_s = res["_t1"].max() - res["_t0"].min()
    assert len(res) == len(rows)
    e2e, steady = len(rows) / e2e_s, len(rows) / steady_s
    ray_cpu = res["_cpu"].sum()  # CPU seconds the actors' processes spent inside their calls
    print(f"Ray Data, {args.actors} actors of 1 CPU: end-to-end {e2e_s:.1f}s = {e2e:.0f} rows/s ({e2e / args.actors:.0f} per core); "
          f"steady {steady_s:.1f}s = {steady:.0f} rows/s ({steady / args.actors:.0f} per core); "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    print(f"per-core ratio Ray Data / loop: end-to-end {e2e / args.actors / loop:.2f}x, steady {steady / args.actors / loop:.2f}x; "
          f"targets: >= 500 rows/s per core, ratio >= 0.9", flush=True)
    print(f"Ray Data steady / plain processes: {steady / plain:.2f}x", flush=True)
    print(f"per CPU-second (load-independent check): loop {len(rows) / loop_cpu:.0f} rows, Ray actors in their calls "
          f"{len(rows) / ray_cpu:.0f} rows ({loop_cpu / ray_cpu:.2f}x)", flush=True)
    ray.shutdown()


if __name__ == "__main__":
    main()
