"""Bounded load test of the model server on loopback: throughput, p50/p95/p99 latency, Serve overhead.

    .venv/bin/python benchmarks/loadtest.py --checkpoint tiny --requests 128 --repeats 3
    .venv/bin/python benchmarks/loadtest.py --checkpoint packaged:smollm2   # real SmolLM2-135M-Instruct
    .venv/bin/python benchmarks/loadtest.py --checkpoint runs/demo/checkpoints/marked --requests 128

In one process and one run, side by side, `--repeats` times:
1. one client, request by request, rotating through four paths so machine-load drift hits all alike:
   direct `engine.generate([user_turn])` in this process (no HTTP, no Serve, no marker handling);
   the full request logic in this process (JSON parse, pydantic, marker validation, prompt
   building, token count, engine, answer/marker split, JSON encode) without HTTP or Serve;
   the same request over HTTP through Serve (POST /v1/generate); and an empty Serve endpoint
   (FastAPI ingress that parses the JSON body and returns a constant): Serve's own fixed cost.
   The replica's `Server-Timing` header splits each HTTP request into parse / prepare / queue
   (batch wait + thread hop) / engine / back / respond, and client latency minus the handler's
   total is the HTTP + proxy + proxy-to-replica hop.
2. N concurrent clients over HTTP (batched by the replica; batch sizes from /healthz before/after).
3. the engine's own batching ceiling: `engine.generate` with N turns per call vs 1, in this process.
Prints a JSON report per repeat and the median over repeats.
Bounded: at most 256 requests, 16 clients, 128 tokens, 5 repeats and a wall-clock cap; it binds and
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

    from treasure.models.packaged import load_smollm2_model, load_smollm2_tokenizer
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


def summary(lat_s: list[float], wall_s: float | None = None) -> dict:
    """Latency percentiles in ms; requests/s over `wall_s` (default: back to back, the sum of latencies)."""
    ms = [x * 1000 for x in lat_s]
    return {"requests": len(ms), "p50_ms": round(pct(ms, 50), 2), "p95_ms": round(pct(ms, 95), 2),
            "p99_ms": round(pct(ms, 99), 2), "mean_ms": round(statistics.mean(ms), 2),
            "throughput_rps": round(len(ms) / (wall_s if wall_s is not None else sum(lat_s)), 2)}


def med_ms(xs: list[float]) -> float:
    return round(statistics.median(xs) * 1000, 3)


def emit(report: dict, out: str | None) -> None:
    """Print the JSON report, and write it to `out` when given."""
    print(json.dumps(report, indent=2))
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(report, indent=2))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def empty_app():
    """Serve's fixed cost: the same kind of ingress (FastAPI) that parses the JSON body and returns a constant."""
    from fastapi import FastAPI, Request
    from ray import serve

    api = FastAPI()

    @serve.deployment(name="Empty", ray_actor_options={"num_cpus": 0})
    @serve.ingress(api)
    class Empty:
        @api.post("/ping")
        async def ping(self, request: Request):
            json.loads(await request.body())
            return {"ok": True}

    return Empty.bind()


def in_process(server, raw: bytes) -> bytes:
    """The replica's request logic for one /v1/generate body, minus HTTP, Serve and the batch queue."""
    from treasure.serving.api_models import GenerateRequest

    prepared = server.prepare_generate(GenerateRequest.model_validate(json.loads(raw)))
    results = server.results_for(prepared, server.generate_batch([prepared])[0])
    return json.dumps(server.response_for(prepared, results)).encode()


def one_repeat(a, direct, prepared, bodies, url, empty_url, health_url) -> dict:
    import httpx

    from treasure.serving.timing import parse_server_timing

    raws = [json.dumps(b).encode() for b in bodies]
    lat: dict[str, list[float]] = {"direct": [], "in_process": [], "http": [], "empty": []}
    timings: list[dict[str, float]] = []
    headers = {"content-type": "application/json"}
    with httpx.Client(timeout=120) as c:
        def call(path: str, k: int) -> None:
            t = time.perf_counter()
            if path == "direct":
                direct.engine.generate([prepared[k].user_turn], prepared[k].params, [prepared[k].prefix])
            elif path == "in_process":
                in_process(direct, raws[k])
            elif path == "http":
                r = c.post(url, content=raws[k], headers=headers)
                r.raise_for_status()
            else:
                c.post(empty_url, content=raws[k], headers=headers).raise_for_status()
            lat[path].append(time.perf_counter() - t)
            if path == "http":
                timings.append(parse_server_timing(r.headers.get("server-timing")))

        paths = list(lat)
        for i in range(a.requests):
            for j in range(len(paths)):  # rotate the order so no path always runs first / after another
                call(paths[(i + j) % len(paths)], i % len(bodies))
        before = c.get(health_url).json()

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
                r = cc.post(url, content=raws[k], headers=headers)
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
    after = httpx.get(health_url, timeout=60).json()

    # The engine's own batching ceiling, in this process: N turns per call vs 1, alternating.
    one, many = [], []
    for r in range(max(4, a.requests // a.clients // 2)):
        turns = [prepared[(r * a.clients + j) % len(prepared)] for j in range(a.clients)]
        t = time.perf_counter()
        direct.engine.generate([turns[0].user_turn], turns[0].params, [turns[0].prefix])
        one.append(time.perf_counter() - t)
        t = time.perf_counter()
        direct.engine.generate([p.user_turn for p in turns], turns[0].params, [p.prefix for p in turns])
        many.append(time.perf_counter() - t)

    n = a.clients
    d, ip, h1, e1 = (summary(lat[k]) for k in ("direct", "in_process", "http", "empty"))
    hn = summary(c_lat, c_wall)
    engine_in_replica = [t["engine"] / 1000 for t in timings]
    outside = [h - t["total"] / 1000 for h, t in zip(lat["http"], timings)]
    batches = after["batches"] - before["batches"]
    batched = after["batched_requests"] - before["batched_requests"]
    return {
        "direct_engine_1_client": d, "in_process_request_1_client": ip, "serve_http_1_client": h1,
        "empty_serve_endpoint_1_client": e1, f"serve_http_{n}_clients": hn,
        "overhead_p50_ms": round(h1["p50_ms"] - d["p50_ms"], 2),
        "overhead_p50_ratio": round(h1["p50_ms"] / d["p50_ms"], 3),
        "overhead_paired_median_ms": med_ms([h - x for h, x in zip(lat["http"], lat["direct"])]),
        "overhead_vs_replica_engine_median_ms": med_ms([h - e for h, e in zip(lat["http"], engine_in_replica)]),
        "marker_handling_in_process_paired_median_ms": med_ms([p - x for p, x in zip(lat["in_process"], lat["direct"])]),
        "serve_floor_empty_endpoint_p50_ms": e1["p50_ms"],
        "replica_breakdown_median_ms": {
            **{k: round(statistics.median(t.get(k, 0.0) for t in timings), 3)
               for k in ("parse", "prepare", "queue", "engine", "back", "respond", "total")},
            "outside_handler (HTTP + proxy + hop)": med_ms(outside)},
        f"throughput_ratio_{n}_vs_1_client": round(hn["throughput_rps"] / h1["throughput_rps"], 2),
        f"replica_batches_in_{n}_client_phase": {
            "batches": batches, "requests": batched, "mean_batch_size": round(batched / batches, 2) if batches else None},
        f"direct_engine_batch_of_{n}": {"calls": len(many), "p50_call_ms": round(pct(many, 50) * 1000, 2),
                                       "throughput_rps": round(n * len(many) / sum(many), 2)},
        f"direct_engine_ceiling_batch_{n}_vs_1": round((n * len(many) / sum(many)) / (len(one) / sum(one)), 2),
        "errors": errors,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default="tiny", help="checkpoint folder, 'tiny' or 'packaged:smollm2'")
    ap.add_argument("--requests", type=int, default=32, help="requests per path and phase (<= 256)")
    ap.add_argument("--clients", type=int, default=8, help="concurrent clients of the last phase (<= 16)")
    ap.add_argument("--max-tokens", type=int, default=16, help="tokens per answer (<= 128)")
    ap.add_argument("--repeats", type=int, default=1, help="repeat every phase this many times (<= 5)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads, same for the direct engine and the replica")
    ap.add_argument("--time-cap", type=float, default=600.0, help="abort after this many seconds")
    ap.add_argument("--work-dir", default=str(REPO / "runs" / "serve_bench"))
    ap.add_argument("--out", default=None, help="also write the JSON report here")
    a = ap.parse_args()
    if not (1 <= a.requests <= 256 and 1 <= a.clients <= 16 and 1 <= a.max_tokens <= 128 and 1 <= a.repeats <= 5):
        ap.error("bounds: requests 1..256, clients 1..16, max-tokens 1..128, repeats 1..5")
    timer = threading.Timer(a.time_cap, lambda: os._exit(3))  # the hard bound: never run away
    timer.daemon = True
    timer.start()
    load_at_start = os.getloadavg()

    import httpx
    import ray
    from ray import serve

    from treasure.serving.app import build_app
    from treasure.serving.api_models import GenerateRequest
    from treasure.serving.config import ServeConfig
    from treasure.serving.server import ModelServer

    ckpt = materialize(a.checkpoint, Path(a.work_dir))
    args = {"checkpoint": str(ckpt), "engine": "transformers", "num_cpus": 1, "num_threads": a.threads, "max_batch_size": a.clients,
            "max_ongoing_requests": 4 * a.clients, "max_queued_requests": 8 * a.clients,
            "max_tokens_limit": a.max_tokens, "default_max_tokens": a.max_tokens}
    direct = ModelServer(ServeConfig(**args))  # the same code path minus HTTP/Serve, in this process
    bodies = [{"prompt": p, "markers": m, "max_tokens": a.max_tokens} for p, m in PROMPTS]
    prepared = [direct.prepare_generate(GenerateRequest(**b)) for b in bodies]

    # Serve's own knobs (RAY_SERVE_*) reach the proxy and replica through the environment Ray starts them with.
    serve_env = {k: v for k, v in os.environ.items() if k.startswith("RAY_SERVE_")}
    ray.init(num_cpus=2, _node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"RAY_AUTH_MODE": os.environ["RAY_AUTH_MODE"], **serve_env}})
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(args), name="loadtest", route_prefix="/")
    serve.run(empty_app(), name="empty", route_prefix="/empty")
    base = f"http://127.0.0.1:{port}"
    url, empty_url, health_url = f"{base}/v1/generate", f"{base}/empty/ping", f"{base}/healthz"
    repeats = []
    try:
        with httpx.Client(timeout=120) as c:
            for b in bodies[:3]:  # warm-up: first calls pay for lazy init on both sides
                c.post(url, json=b).raise_for_status()
                c.post(empty_url, json=b).raise_for_status()
                in_process(direct, json.dumps(b).encode())
            health = c.get(health_url).json()
        for _ in range(a.repeats):
            repeats.append(one_repeat(a, direct, prepared, bodies, url, empty_url, health_url))
    finally:
        serve.shutdown()
        ray.shutdown()

    scalars = [k for k, v in repeats[0].items() if isinstance(v, (int, float))]
    report = {
        "checkpoint": a.checkpoint, "max_tokens": a.max_tokens, "torch_threads": a.threads,
        "replica_torch_threads": health.get("torch_threads"), "requests_per_phase": a.requests,
        "clients": a.clients, "repeats": a.repeats, "serve_env": serve_env,
        "median_over_repeats": {k: round(statistics.median(r[k] for r in repeats), 3) for k in scalars},
        "per_repeat": repeats,
        "load_average_at_start": load_at_start, "load_average_at_end": os.getloadavg(),
    }
    emit(report, a.out)


if __name__ == "__main__":
    main()
