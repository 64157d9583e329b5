"""Tokens/s of the Ray Train loop vs a plain single-process torch loop: same model, data, batches, steps.

Run:  .venv/bin/python benchmarks/train_bench.py [--config pipelines/configs/demo.yaml] [--steps 60] [--warmup 10]
      [--repeats 3] [--arms ray,plain] [--input DATASET] [--peak-flops 989e12] [train-key=value ...]

The parent reads the train section, resolves the rows exactly as the stage does (held-out split and
max_examples applied, through Ray Data) and trains/caches the corpus tokenizer once. Then every arm
runs in a fresh subprocess, `--repeats` times, the order reversed on every other repeat:

  ray             treasure.train.stage.run: TorchTrainer, 1 worker reserving train.pool.num_cpus CPUs, in its
                  own local Ray cluster (no dashboard), the real loop (treasure.train.loop) with MLflow
  plain           one process, no Ray: the same rows, data step (format_epoch, batch_order, collate),
                  model init, AdamW, LR schedule, grad clip and torch thread count as the loop
  diagnostic arms, to attribute a gap (pass e.g. --arms ray,plain,plain_ray_idle,plain_nice15):
  plain_ray_idle  plain while an idle Ray cluster of the same size is up (cost of Ray's daemons)
  plain_nice15    plain at nice 15: Ray starts its workers at nice 15 (RAY_worker_niceness)
  ray_nice0       ray with RAY_worker_niceness=0

Both loops see the same batches in the same order (asserted: the Ray worker's shard fingerprint must
equal the plain loop's). Throughput = non-pad tokens / wall-clock seconds over steps warmup+1..steps,
measured at the end of each step in the training process, so it includes collation, logging and any
time the process loses to others; the final checkpoint comes after the window. The parent samples
/proc once a second during each arm and reports which processes used CPU in the window (cores).
Prints one JSON object: per-arm throughputs per repeat, the median Ray/plain ratio with its spread,
per-step time ratios, the census, and the MFU formula 6 * N * tokens/s / peak with its inputs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "platform"))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ARMS = ("ray", "plain", "plain_ray_idle", "plain_nice15", "ray_nice0")


# --- census: CPU time of every process on the machine, sampled from /proc ---------------------------
def _label(pid: str) -> str:
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    args = [a.decode(errors="replace") for a in args if a]
    if not args:
        return "[kernel]"
    if args[0].startswith("ray::") or args[0].startswith("ray-dashboard"):
        return args[0].split()[0][:40]
    name = os.path.basename(args[0].split()[0])
    if name.startswith("python") and len(args) > 1:
        name += " " + os.path.basename(args[2] if args[1] in ("-m", "-B", "-u") and len(args) > 2 else args[1])
    return name[:60]


def _ticks(stat_path: str) -> int:
    fields = Path(stat_path).read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime, clock ticks


def _snapshot(focus_pid: int | None) -> dict[str, tuple[str, int]]:
    """{pid: (label, ticks)} for every process; for the training process also {pid/tid: (thread name, ticks)}."""
    steal = int(Path("/proc/stat").read_text().split("\n", 1)[0].split()[8])  # time the hypervisor took
    out = {"steal": ("[hypervisor steal]", steal)}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            label = _label(d)
            out[d] = (label, _ticks(f"/proc/{d}/stat"))
            if int(d) == focus_pid or label.startswith("ray::RayTrainWorker"):
                for t in os.listdir(f"/proc/{d}/task"):
                    name = Path(f"/proc/{d}/task/{t}/comm").read_text().strip()
                    out[f"{d}/{t}"] = (f"thread {name}", _ticks(f"/proc/{d}/task/{t}/stat"))
        except (OSError, IndexError):
            continue
    return out


class Census(threading.Thread):
    """Snapshots of all processes' CPU time every `interval` seconds, in the (otherwise idle) parent."""

    def __init__(self, interval: float = 1.0):
        super().__init__(daemon=True)
        self.interval, self.samples, self.stop, self.focus_pid = interval, [], threading.Event(), None

    def run(self) -> None:
        while not self.stop.is_set():
            self.samples.append((time.time(), _snapshot(self.focus_pid)))
            self.stop.wait(self.interval)

    def cores(self, start: float, end: float, top: int = 8) -> dict:
        """Cores used per process label between the first and last snapshot inside [start, end]."""
        inside = [s for s in self.samples if start <= s[0] <= end]
        if len(inside) < 2:
            return {}
        (t0, a), (t1, b) = inside[0], inside[-1]
        tick, per, threads = os.sysconf("SC_CLK_TCK"), {}, {}
        for pid, (label, ticks) in b.items():
            used = ticks - a[pid][1] if pid in a else 0  # a process born inside the window: its start is noise
            if used > 0:
                into = threads if "/" in pid else per
                into[label] = into.get(label, 0.0) + used / tick / (t1 - t0)
        ranked = sorted(per.items(), key=lambda kv: -kv[1])
        return {"seconds": round(t1 - t0, 1), "total": round(sum(per.values()), 3),
                "top": {k: round(v, 3) for k, v in ranked[:top]},
                "training_process_threads": {k: round(v, 3) for k, v in sorted(threads.items(), key=lambda kv: -kv[1])[:top]}}


# --- the arms (run in child processes) ---------------------------------------------------------------
def plain_arm(cfg, rows: list[dict], tokenizer_dir: str, steps: int) -> dict:
    """The reference loop: one process, no Ray; the loop's data step, model, optimizer and schedule."""
    import torch

    from treasure.taxonomy import load_taxonomy
    from treasure.train.data_step import batch_order, collate, format_epoch, load_examples
    from treasure.train.loop import lr_multiplier
    from treasure.train.model_build import build_model, count_parameters, load_tokenizer

    torch.set_num_threads(cfg.torch_threads)  # the loop does the same in the worker
    taxonomy = load_taxonomy(cfg.taxonomy)
    tok = load_tokenizer(cfg.model, tokenizer_dir if cfg.model.kind == "tiny" else None)
    lm = build_model(cfg.model, tok, max_length=cfg.max_length, seed=cfg.seed)
    opt = torch.optim.AdamW(lm.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_multiplier(
        s, warmup_steps=cfg.warmup_steps, max_steps=cfg.max_steps, min_lr_ratio=cfg.min_lr_ratio))
    examples = load_examples(rows, taxonomy)
    data = format_epoch(examples, tok, taxonomy, markers=cfg.markers, dropout=cfg.dropout,
                        seed=cfg.seed, epoch=0, max_length=cfg.max_length)
    batches = batch_order([len(x) for x in data.input_ids], cfg.batch_size, seed=cfg.seed, epoch=0)
    if len(batches) < steps * cfg.grad_accum:
        raise ValueError(f"{len(batches)} batches in one epoch, {steps} steps need more: lower --steps")
    lm.train()
    per_step, bi, start = [], 0, time.perf_counter()
    for step in range(1, steps + 1):
        tokens = 0
        for _ in range(cfg.grad_accum):
            batch = collate(batches[bi], data, pad_id=tok.pad_token_id)
            tokens += int(batch["attention_mask"].sum())
            (lm(**batch).loss / cfg.grad_accum).backward()
            bi += 1
        torch.nn.utils.clip_grad_norm_(lm.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        per_step.append({"step": step, "tokens": tokens, "elapsed": time.perf_counter() - start, "t": time.time()})
    ids = [e.id for e in examples]
    return {"steps": per_step, "params": count_parameters(lm), "torch_threads": torch.get_num_threads(),
            "shard": f"{len(ids)}:{hashlib.sha256(chr(10).join(ids).encode()).hexdigest()[:12]}"}


def ray_arm(cfg, num_cpus: int) -> dict:
    """The real stage (TorchTrainer + treasure.train.loop); per-step figures read back from MLflow."""
    import ray
    from mlflow import MlflowClient

    from treasure.train.stage import run

    _ray_init(num_cpus)
    try:
        summary = run(cfg)
    finally:
        ray.shutdown()
    client, run_id = MlflowClient(), summary["mlflow_run_id"]
    hist = {k: {m.step: m for m in client.get_metric_history(run_id, k)}
            for k in ("tokens", "elapsed_seconds", "tokens_per_second", "torch_threads")}
    per_step = [{"step": s, "tokens": hist["tokens"][s].value, "elapsed": hist["elapsed_seconds"][s].value,
                 "t": hist["elapsed_seconds"][s].timestamp / 1000,
                 "in_step": hist["tokens"][s].value / hist["tokens_per_second"][s].value}
                for s in sorted(hist["elapsed_seconds"])]
    tags = client.get_run(run_id).data.tags
    return {"steps": per_step, "shard": tags.get("shard.rank0"),
            "torch_threads": int(next(iter(hist["torch_threads"].values())).value)}


def _ray_init(num_cpus: int) -> None:
    import ray

    ray.init(num_cpus=num_cpus, _node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"RAY_AUTH_MODE": os.environ["RAY_AUTH_MODE"]}})


def child(args) -> None:
    """One arm in this fresh process; prints its JSON as the last line."""
    from treasure.train.config import TrainConfig

    work = Path(args.workdir)
    cfg = TrainConfig.model_validate_json((work / "config.json").read_text())
    if args.arm.startswith("ray"):
        if args.arm == "ray_nice0":
            os.environ["RAY_worker_niceness"] = "0"
        out = ray_arm(cfg.model_copy(update={"output": str(work / f"ckpt-{args.tag}")}), args.num_cpus)
    else:
        import pyarrow.parquet as pq

        if args.arm == "plain_nice15":
            os.nice(15)
        if args.arm == "plain_ray_idle":
            _ray_init(args.num_cpus)
        out = plain_arm(cfg, pq.read_table(work / "rows.parquet").to_pylist(), str(work / "tokenizer"), args.steps)
    print(json.dumps(out))


# --- the parent: prepare once, run arms alternating, summarize ----------------------------------------
def prepare(args, tmp: Path) -> dict:
    """Resolve the config and rows as the stage does; cache the tokenizer; write both for the arms."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    from treasure import storage
    from treasure.config import load_config
    from treasure.taxonomy import load_taxonomy
    from treasure.train import stage
    from treasure.train.config import TrainConfig

    base = load_config(TrainConfig, args.config, args.overrides, section="train")
    taxonomy = load_taxonomy(base.taxonomy)
    data_uri = args.input or base.input
    if not storage.read_manifest(data_uri):
        raise SystemExit(f"{data_uri} has no committed manifest: run the annotate stage (or pass --input)")
    cfg = base.model_copy(update={
        "input": data_uri, "experiment": "train-bench", "max_steps": args.steps, "checkpoint_every": args.steps,
        "pool": {**base.pool.model_dump(), "count": 1}, "force": True, "register": False, "output": str(tmp / "ckpt")})
    # model.tokenizer_cache stays the config's: a corpus BPE the stage already trained is reused
    _ray_init(args.num_cpus)
    try:
        ds, manifest = stage._read_dataset(cfg, taxonomy)
        rows = ds.take_all()
        files = stage._tokenizer_files(cfg, rows, manifest["manifest_id"], taxonomy)
    finally:
        ray.shutdown()
    (tmp / "tokenizer").mkdir()
    for name, blob in (files or {}).items():
        (tmp / "tokenizer" / name).write_bytes(blob)
    pq.write_table(pa.Table.from_pylist(rows), tmp / "rows.parquet")
    (tmp / "config.json").write_text(cfg.model_dump_json())
    return {"cfg": cfg, "rows": len(rows), "data": data_uri}


def window(per_step: list[dict], warmup: int) -> dict:
    """Throughput over steps warmup+1..last, from end-of-step elapsed times."""
    by = {s["step"]: s for s in per_step}
    last = max(by)
    seconds = by[last]["elapsed"] - by[warmup]["elapsed"]
    tokens = sum(by[s]["tokens"] for s in range(warmup + 1, last + 1))
    step_seconds = [by[s]["elapsed"] - by[s - 1]["elapsed"] for s in range(warmup + 1, last + 1)]
    return {"tokens_per_second": tokens / seconds, "seconds": seconds, "tokens": tokens, "step_seconds": step_seconds,
            "start": by[warmup]["t"], "end": by[last]["t"],
            "between_steps_seconds": (seconds - sum(by[s]["in_step"] for s in range(warmup + 1, last + 1))
                                      if "in_step" in by[last] else 0.0)}


def run_arm(arm: str, tag: str, args, tmp: Path) -> dict:
    census = Census()
    census.start()
    cmd = [sys.executable, __file__, "--arm", arm, "--workdir", str(tmp), "--tag", tag,
           "--steps", str(args.steps), "--num-cpus", str(args.num_cpus)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT / "platform")})
    census.focus_pid = proc.pid  # the plain arms train in this process; the Ray arm in ray::RayTrainWorker
    stdout, stderr = proc.communicate()
    census.stop.set()
    census.join()
    if proc.returncode != 0:
        raise RuntimeError(f"arm {arm} failed:\n{stderr[-4000:]}")
    out = json.loads(stdout.strip().splitlines()[-1])
    w = window(out["steps"], args.warmup)
    return {**out, "window": w, "census": census.cores(w["start"], w["end"])}


def summarize(args, prep: dict, results: dict) -> dict:
    cfg, arms = prep["cfg"], list(results)
    params = next((r["params"] for rs in results.values() for r in rs if "params" in r), None)
    tps = {a: [r["window"]["tokens_per_second"] for r in results[a]] for a in arms}
    shards = {r["shard"] for rs in results.values() for r in rs}
    if len(shards) != 1:
        raise RuntimeError(f"the arms trained on different rows: {shards}")
    ratios = {}
    for a in arms:
        if a != "plain" and "plain" in tps:
            rs = [x / p for x, p in zip(tps[a], tps["plain"])]  # paired within each repeat
            per_step = [statistics.median(ps / xs for ps, xs in zip(rp["window"]["step_seconds"], rx["window"]["step_seconds"]))
                        for rx, rp in zip(results[a], results["plain"])]
            ratios[f"{a}/plain"] = {"median": round(statistics.median(rs), 3), "min": round(min(rs), 3),
                                    "max": round(max(rs), 3), "per_repeat": [round(x, 3) for x in rs],
                                    "median_per_step_time_ratio": round(statistics.median(per_step), 3)}
    ray_tps = statistics.median(tps["ray"]) if "ray" in tps else None
    return {
        "machine": f"{os.cpu_count()} CPUs", "model": cfg.model.model_dump(), "params": params, "data": prep["data"],
        "rows": prep["rows"], "steps": args.steps, "window_steps": f"{args.warmup + 1}..{args.steps}",
        "repeats": args.repeats, "batch_size": cfg.batch_size, "grad_accum": cfg.grad_accum,
        "max_length": cfg.max_length, "log_every": cfg.log_every, "cpus_per_worker": cfg.pool.num_cpus,
        "torch_threads": {a: sorted({r["torch_threads"] for r in results[a]}) for a in arms},
        "tokens_per_second": {a: {"median": round(statistics.median(v), 1), "all": [round(x, 1) for x in v]} for a, v in tps.items()},
        "ratios": ratios, "target": "ray/plain >= 0.95",
        "between_steps_seconds_ray": [round(r["window"]["between_steps_seconds"], 3) for r in results.get("ray", [])],
        "census_cores_in_window": {a: [r["census"] for r in results[a]] for a in arms},
        "mfu": {"formula": "MFU = 6 * N * tokens_per_second / peak_flops (attention FLOPs not counted)",
                "N": params, "tokens_per_second": round(ray_tps, 1) if ray_tps else None,
                "model_flops_per_second": 6 * params * ray_tps if (params and ray_tps) else None,
                "peak_flops": args.peak_flops or "unknown (CPU: pass --peak-flops to get MFU)",
                "mfu": (6 * params * ray_tps / args.peak_flops) if (args.peak_flops and params and ray_tps) else None},
        "load_average_end": os.getloadavg(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="pipelines/configs/demo.yaml")
    p.add_argument("--input", default=None, help="committed annotated dataset; default: the train section's input")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=10, help="first steps excluded from the window")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--arms", default="ray,plain", help=f"comma-separated, from {ARMS}; must include plain")
    p.add_argument("--num-cpus", type=int, default=os.cpu_count(), help="Ray cluster size")
    p.add_argument("--peak-flops", type=float, default=None, help="device peak FLOP/s for MFU (H100 bf16 dense: 989e12)")
    p.add_argument("--arm", choices=ARMS, help=argparse.SUPPRESS)
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    p.add_argument("--tag", default="0", help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    tmp = Path(args.workdir or tempfile.mkdtemp(prefix="train-bench-"))
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{tmp / 'mlflow.db'}")
    os.environ.setdefault("MLFLOW_ARTIFACT_ROOT", (tmp / "mlartifacts").as_uri())
    if args.arm:
        return child(args)
    arms = args.arms.split(",")
    if "plain" not in arms or not set(arms) <= set(ARMS):
        raise SystemExit(f"--arms must include plain and come from {ARMS}")
    prep = prepare(args, tmp)
    results: dict[str, list] = {a: [] for a in arms}
    for r in range(args.repeats):
        for arm in (arms if r % 2 == 0 else arms[::-1]):
            print(f"repeat {r + 1}/{args.repeats}: {arm}", file=sys.stderr, flush=True)
            results[arm].append(run_arm(arm, f"{arm}-{r}", args, tmp))
            res = results[arm][-1]
            print(f"  {res['window']['tokens_per_second']:.1f} tokens/s; census {json.dumps(res['census'])}",
                  file=sys.stderr, flush=True)
    print(json.dumps(summarize(args, prep, results), indent=2))


if __name__ == "__main__":
    main()
