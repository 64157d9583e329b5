"""Bounded load test of the model server on loopback: throughput, p50/p95/p99 latency, Serve overhead.

    .venv/bin/python serving/loadtest.py --checkpoint tiny               # demo-shaped random model
    .venv/bin/python serving/loadtest.py --checkpoint packaged:smollm2   # real SmolLM2-135M-Instruct
    .venv/bin/python serving/loadtest.py --checkpoint runs/demo/checkpoints/marked --requests 48

In one process and one run, side by side:
1. direct: `engine.generate([user_turn])` in this process (no HTTP, no Serve, no marker handling);
2. serve, 1 client: the same requests over HTTP through Serve (POST /v1/generate), alternating
   request by request with (1) so machine load drifts hit both alike;
3. serve, N clients: the same requests from N concurrent clients (batched by the replica).
Prints a JSON report: per phase p50/p95/p99 latency and requests/s, the p50 overhead of the
Serve path in ms and as a ratio, and the N-client / 1-client throughput ratio.
Bounded: at most 256 requests, 16 clients, 128 tokens each, and a wall-clock cap; it binds and
calls 127.0.0.1 only, on its own local Ray cluster.
"""

import argparse
import json
import os
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PROMPTS = [
    ("Give me a tip for learning a language.", {"length_bucket": "concise"}),
    ("What is the capital of France?", {"task": "QuestionAnswering"}),
    ("Write a haiku about rain.", {"task": "CreativeWriting", "language": "English"}),
    ("Explain photosynthesis.", {}),
    ("List three prime numbers.", {"format": "Enumeration"}),
    ("Translate 'good morning' to Spanish.", {"language": "Spanish"}),
    ("Why is the sky blue?", {"domain": "Sciences"}),
    ("Suggest a name for a cat.", {"length_bucket": "concise", "domain": "Conversation"}),
]


def materialize(checkpoint: str, root: Path) -> Path:
    """A checkpoint folder for `checkpoint`: as is, or built once under `root` for 'tiny' / 'packaged:smollm2'."""
    if checkpoint not in ("tiny", "packaged:smollm2"):
        return Path(checkpoint)
    out = root / checkpoint.replace(":", "_")
    if (out / "treasure.json").exists():
        return out
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from treasure.packaged import load_smollm2_model, load_smollm2_tokenizer
    from treasure.taxonomy import load_taxonomy

    tok = load_smollm2_tokenizer()
    if checkpoint == "tiny":
        # The embedded default's shape (4 layers, width 192; architecture.md), random weights,
        # with SmolLM2's tokenizer (larger vocabulary than the demo's own BPE).
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(
            vocab_size=len(tok), hidden_size=192, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=4, max_position_embeddings=512, bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    else:
        model = load_smollm2_model()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    tax = load_taxonomy("paper")
    (out / "taxonomy.yaml").write_text(tax.to_yaml())
    (out / "treasure.json").write_text(json.dumps({"markers": False, "taxonomy_version": tax.version,
                                                   "data_manifest_id": None, "config": {}, "step": 0,
                                                   "quality_reference": {}}))
    return out


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))]


def summary(lat_s: list[float], wall_s: float) -> dict:
    ms = [x * 1000 for x in lat_s]
    return {"requests": len(ms), "p50_ms": round(pct(ms, 50), 2), "p95_ms": round(pct(ms, 95), 2),
            "p99_ms": round(pct(ms, 99), 2), "mean_ms": round(statistics.mean(ms), 2),
            "throughput_rps": round(len(ms) / wall_s, 2)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default="tiny", help="checkpoint folder, 'tiny' or 'packaged:smollm2'")
    ap.add_argument("--requests", type=int, default=32, help="requests per phase (<= 256)")
    ap.add_argument("--clients", type=int, default=8, help="concurrent clients of the last phase (<= 16)")
    ap.add_argument("--max-tokens", type=int, default=16, help="tokens per answer (<= 128)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads, same for the direct engine and the replica")
    ap.add_argument("--time-cap", type=float, default=600.0, help="abort after this many seconds")
    ap.add_argument("--work-dir", default=str(REPO / "runs" / "serve_bench"))
    ap.add_argument("--out", default=None, help="also write the JSON report here")
    a = ap.parse_args()
    if not (1 <= a.requests <= 256 and 1 <= a.clients <= 16 and 1 <= a.max_tokens <= 128):
        ap.error("bounds: requests 1..256, clients 1..16, max-tokens 1..128")
    timer = threading.Timer(a.time_cap, lambda: os._exit(3))  # the hard bound: never run away
    timer.daemon = True
    timer.start()

    import httpx
    import ray
    from ray import serve

    from serving.app import build_app
    from treasure.serving.api_models import GenerateRequest
    from treasure.serving.config import ServeConfig
    from treasure.serving.server import ModelServer

    ckpt = materialize(a.checkpoint, Path(a.work_dir))
    args = {"checkpoint": str(ckpt), "num_cpus": 1, "num_threads": a.threads, "max_batch_size": a.clients,
            "max_ongoing_requests": 4 * a.clients, "max_queued_requests": 8 * a.clients,
            "max_tokens_limit": a.max_tokens, "default_max_tokens": a.max_tokens}
    direct = ModelServer(ServeConfig(**args))  # the same code path minus HTTP/Serve, in this process
    bodies = [{"prompt": p, "markers": m, "max_tokens": a.max_tokens} for p, m in PROMPTS]
    prepared = [direct.prepare_generate(GenerateRequest(**b)) for b in bodies]

    ray.init(num_cpus=2, _node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"RAY_AUTH_MODE": os.environ["RAY_AUTH_MODE"]}})
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(args), name="loadtest", route_prefix="/")
    url = f"http://127.0.0.1:{port}/v1/generate"
    try:
        with httpx.Client(timeout=120) as c:
            for b in bodies[:3]:  # warm-up: first calls pay for lazy init on both sides
                c.post(url, json=b).raise_for_status()
                direct.engine.generate([prepared[0].user_turn], prepared[0].params)
            d_lat, h_lat, d_wall, h_wall = [], [], 0.0, 0.0
            for i in range(a.requests):
                k = i % len(bodies)
                t = time.perf_counter()
                direct.engine.generate([prepared[k].user_turn], prepared[k].params)
                d_lat.append(time.perf_counter() - t)
                t = time.perf_counter()
                r = c.post(url, json=bodies[k])
                h_lat.append(time.perf_counter() - t)
                r.raise_for_status()
            d_wall, h_wall = sum(d_lat), sum(h_lat)

        lock, c_lat, errors = threading.Lock(), [], []
        todo = list(range(a.requests))

        def client() -> None:
            with httpx.Client(timeout=120) as cc:
                while True:
                    with lock:
                        if not todo:
                            return
                        k = todo.pop() % len(bodies)
                    t = time.perf_counter()
                    r = cc.post(url, json=bodies[k])
                    with lock:
                        c_lat.append(time.perf_counter() - t)
                        if r.status_code != 200:
                            errors.append(r.status_code)

        t0 = time.perf_counter()
        threads = [threading.Thread(target=client) for _ in range(a.clients)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        c_wall = time.perf_counter() - t0
        with httpx.Client(timeout=60) as c:
            health = c.get(f"http://127.0.0.1:{port}/healthz").json()

        # Reference: the engine's own batching in this process (N prompts per generate call).
        b_lat, rounds = [], max(1, a.requests // a.clients)
        for r in range(rounds):
            turns = [prepared[(r * a.clients + j) % len(prepared)] for j in range(a.clients)]
            t = time.perf_counter()
            direct.engine.generate([p.user_turn for p in turns], turns[0].params)
            b_lat.append(time.perf_counter() - t)
    finally:
        serve.shutdown()
        ray.shutdown()

    d, h1, hn = summary(d_lat, d_wall), summary(h_lat, h_wall), summary(c_lat, c_wall)
    db = {"batches": rounds, "p50_batch_ms": round(pct([x * 1000 for x in b_lat], 50), 2),
          "throughput_rps": round(rounds * a.clients / sum(b_lat), 2)}
    report = {
        "checkpoint": a.checkpoint, "max_tokens": a.max_tokens, "torch_threads": a.threads,
        "direct_engine_1_client": d, "serve_http_1_client": h1, f"serve_http_{a.clients}_clients": hn,
        "overhead_p50_ms": round(h1["p50_ms"] - d["p50_ms"], 2),
        "overhead_p50_ratio": round(h1["p50_ms"] / d["p50_ms"], 3),
        f"throughput_ratio_{a.clients}_vs_1_client": round(hn["throughput_rps"] / h1["throughput_rps"], 2),
        f"direct_engine_batch_of_{a.clients}": db,
        f"direct_throughput_ratio_batch_{a.clients}_vs_1": round(db["throughput_rps"] / d["throughput_rps"], 2),
        "replica_batching": {k: health.get(k) for k in ("batches", "batched_requests", "mean_batch_size")},
        "errors": errors, "load_average_at_end": os.getloadavg(),
    }
    print(json.dumps(report, indent=2))
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
