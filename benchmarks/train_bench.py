"""Tokens/s of the Ray Train loop vs a plain single-process torch loop: same model, data, steps.

Run:  .venv/bin/python benchmarks/train_bench.py [--config pipelines/configs/demo.yaml] [--steps 60] [--warmup 5]
      [--input runs/demo/annotated] [--peak-flops 989e12] [train-key=value ...]
Both loops train the train section's model (1 worker, all CPUs) on the same rows (the committed
dataset at --input, else a synthetic annotated set written to a temp folder), with the same
tokenizer, batches, optimizer and schedule. Throughput is wall-clock tokens (non-pad) per second
over steps warmup+1..steps, so it includes batching, logging and (Ray) reduction overhead.
Prints one JSON object: both throughputs, the ratio (target >= 0.95), and the MFU formula
6 * N * tokens/s / peak with its inputs (MFU is null unless --peak-flops is given).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def synthetic_dataset(folder: Path, n: int, taxonomy_version: str) -> str:
    """A committed annotated dataset of `n` synthetic rows (answer length follows length_bucket)."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    from treasure import storage

    rng = random.Random(0)
    words = "river stone light quiet paper garden window music bread winter morning letter bridge cloud".split()
    rows = []
    for i in range(n):
        bucket = rng.choice(["concise", "medium", "long"])
        k = {"concise": rng.randint(5, 40), "medium": rng.randint(50, 150), "long": rng.randint(170, 260)}[bucket]
        markers = {"length_tokens": str(k), "length_bucket": bucket, "domain": rng.choice(["Culture", "Sciences"]),
                   "language": "English"}
        rows.append({"id": f"bench:{i:06d}", "prompt": f"Write about the {rng.choice(words)}.",
                     "response": " ".join(rng.choice(words) for _ in range(k)), "source": "bench",
                     "language": "English", "metadata": "{}", "markers": json.dumps(markers), "provenance": "{}"})
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    uri = str(folder / "annotated")
    storage.write_bytes(storage.join(uri, "data/part-00000.parquet"), buf.getvalue())
    storage.commit_manifest(uri, [storage.join(uri, "data/part-00000.parquet")], {"rows": n, "taxonomy_version": taxonomy_version})
    return uri


def plain_loop(cfg, rows, tokenizer_dir, steps: int, warmup: int) -> dict:
    """The reference: one process, no Ray, the same data step, model and optimizer."""
    import torch
    from transformers import AutoTokenizer

    from treasure.taxonomy import load_taxonomy
    from treasure.train.data_step import batch_order, collate, format_epoch, load_examples
    from treasure.train.loop import lr_multiplier
    from treasure.train.model_build import build_model, load_tokenizer

    torch.set_num_threads(cfg.cpus_per_worker)
    taxonomy = load_taxonomy(cfg.taxonomy)
    tok = load_tokenizer(cfg.model, str(tokenizer_dir)) if cfg.model.kind == "tiny" else AutoTokenizer.from_pretrained(cfg.model.path)
    lm = build_model(cfg.model, tok, max_length=cfg.max_length, seed=cfg.seed)
    opt = torch.optim.AdamW(lm.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_multiplier(
        s, warmup_steps=cfg.warmup_steps, max_steps=cfg.max_steps, min_lr_ratio=cfg.min_lr_ratio))
    data = format_epoch(load_examples(rows, taxonomy), tok, taxonomy, markers=cfg.markers, dropout=cfg.dropout,
                        seed=cfg.seed, epoch=0, max_length=cfg.max_length)
    batches = batch_order([len(x) for x in data.input_ids], cfg.batch_size, seed=cfg.seed, epoch=0)
    lm.train()
    tokens, t_start = 0, None
    for step in range(steps):
        if step == warmup:
            t_start, tokens = time.perf_counter(), 0
        batch = collate(batches[step % len(batches)], data, pad_id=tok.pad_token_id)
        lm(**batch).loss.backward()
        torch.nn.utils.clip_grad_norm_(lm.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        tokens += int(batch["attention_mask"].sum())
    from treasure.train.model_build import count_parameters

    return {"tokens_per_second": tokens / (time.perf_counter() - t_start), "params": count_parameters(lm)}


def ray_loop_throughput(run_id: str, warmup: int) -> float:
    """Wall-clock tokens/s of the Ray loop from its per-step MLflow metrics (steps after warmup)."""
    from mlflow import MlflowClient

    client = MlflowClient()
    tokens = {m.step: m.value for m in client.get_metric_history(run_id, "tokens")}
    elapsed = {m.step: m.value for m in client.get_metric_history(run_id, "elapsed_seconds")}
    last = max(elapsed)
    return sum(v for s, v in tokens.items() if s > warmup) / (elapsed[last] - elapsed[warmup])


def main() -> None:
    import ray

    from treasure.config import load_config
    from treasure.taxonomy import load_taxonomy
    from treasure.train.config import TrainConfig
    from treasure.train.stage import run
    from treasure.train.tokenizer_bpe import cache_key

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="pipelines/configs/demo.yaml")
    p.add_argument("--input", default=None, help="annotated dataset; default: the config's if committed, else synthetic")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--peak-flops", type=float, default=None, help="device peak FLOP/s for MFU (H100 bf16 dense: 989e12)")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="train-bench-"))
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{tmp / 'mlflow.db'}")
    os.environ.setdefault("MLFLOW_ARTIFACT_ROOT", (tmp / "mlartifacts").as_uri())
    base = load_config(TrainConfig, args.config, args.overrides, section="train")
    from treasure import storage

    taxonomy = load_taxonomy(base.taxonomy)
    data_uri = args.input or (base.input if storage.read_manifest(base.input) else synthetic_dataset(tmp, 2000, taxonomy.version))
    cfg = base.model_copy(update={
        "input": data_uri, "output": str(tmp / "ckpt"), "experiment": "train-bench", "max_steps": args.steps,
        "checkpoint_every": args.steps, "num_workers": 1, "cpus_per_worker": os.cpu_count() if not base.use_gpu else 1,
        "log_every": args.steps, "force": True, "model": base.model.model_copy(update={"tokenizer_cache": str(tmp / "tok")})})
    ray.init(num_cpus=os.cpu_count(), _node_ip_address="127.0.0.1", include_dashboard=False,
             runtime_env={"env_vars": {"RAY_AUTH_MODE": os.environ["RAY_AUTH_MODE"]}}, log_to_driver=False)
    summary = run(cfg)
    ray_tps = ray_loop_throughput(summary["mlflow_run_id"], args.warmup)
    manifest = storage.read_manifest(data_uri)
    rows = ray.data.read_parquet([storage.join(data_uri, f["path"]) for f in manifest["files"]]).take_all()
    if cfg.max_examples:
        rows = sorted(rows, key=lambda r: r["id"])[: cfg.max_examples]
    ray.shutdown()
    tokenizer_dir = Path(cfg.model.tokenizer_cache) / cache_key(f"{manifest['manifest_id']}:{cfg.model.tokenizer_rows}", cfg.model.vocab_size, taxonomy.version)
    plain = plain_loop(cfg, rows, tokenizer_dir, args.steps, args.warmup)
    n = plain["params"]
    result = {
        "model": cfg.model.model_dump(), "params": n, "data": data_uri, "rows": len(rows), "steps": args.steps,
        "warmup_steps_excluded": args.warmup, "batch_size": cfg.batch_size, "max_length": cfg.max_length,
        "threads": cfg.cpus_per_worker, "cpus": os.cpu_count(), "load_average": os.getloadavg(),
        "plain_tokens_per_second": round(plain["tokens_per_second"], 1), "ray_tokens_per_second": round(ray_tps, 1),
        "ratio_ray_over_plain": round(ray_tps / plain["tokens_per_second"], 3),
        "mfu_formula": "6 * params * tokens_per_second / peak_flops",
        "model_flops_per_second_ray": 6 * n * ray_tps, "peak_flops": args.peak_flops,
        "mfu_ray": (6 * n * ray_tps / args.peak_flops) if args.peak_flops else None,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
