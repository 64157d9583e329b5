"""Our endpoint (Ray Serve app, engine: vllm) vs vLLM's own OpenAI server, same model, same machine, one run.

    .venv/bin/python benchmarks/serving_vllm.py                      # 1, 8, 32 clients, 64 requests each, 2 rounds
    .venv/bin/python benchmarks/serving_vllm.py --requests 16 --repeats 1   # smoke run
    .venv/bin/python benchmarks/serving_vllm.py --clients 1,8 --max-tokens 128 --out runs/serve_bench/vllm.json

Both servers are started once, in this process's run, and stay up side by side:
- ours: `treasure/serving/app.py` on a local Ray cluster of its own, `engine: vllm`, bfloat16, one replica with
  `num_cpus: 1`, `max_ongoing_requests` 32 (vLLM's max_num_seqs follows it) and `max_queued_requests` 64;
- vLLM's: `python -m vllm.entrypoints.openai.api_server` as a child process on the same checkpoint
  folder (bfloat16, --max-model-len 2048, --enforce-eager, --max-num-seqs 32), VLLM_CPU_KVCACHE_SPACE
  the same as ours (`--kv-cache-gib`, default 2).
The model is the real SmolLM2-135M-Instruct (`treasure.models.packaged.smollm2_hf_dir()`), laid out as a
checkpoint (its files symlinked, plus taxonomy.yaml and treasure.json with markers false), or any
checkpoint folder given with --checkpoint.
For each number of concurrent clients (closed loop: asyncio + httpx, each client sends its next
request when the last one ended), the two servers take turns (ours at 1, vLLM at 1, ours at 8, ...;
who goes first swaps every round) so machine-load drift hits both alike. Every request is the same
streamed chat completion on both (same prompts in the same order, max_tokens, temperature 0,
`stream_options.include_usage`). Tokens are those actually generated (`usage.completion_tokens` of
the final chunk: vLLM's usage-only chunk, our last chunk), since our endpoint has no `ignore_eos`.
Per server and cell: output tokens/s and requests/s over the cell's wall time, p50/p99 latency (send
to end of stream), p50/p99 time to first token (first chunk with non-empty content); and, for the
first cell, how many answers are the same text on both (greedy; the first differences are shown).
Prints a JSON report (per round, median over rounds, ratios ours/vLLM, scaling N vs 1 client, vLLM's
OpenMP core binding) and a markdown table. vLLM's server log goes to <work-dir>/vllm_server.log.
Bounded: at most 256 requests per cell, 32 clients, 512 tokens, 5 rounds and a wall-clock cap (no
new cell once the cap is near; a hard stop at the cap); it binds and calls 127.0.0.1 only.
"""

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "platform"), str(REPO), str(Path(__file__).resolve().parent)]

from loadtest import emit, free_port, pct  # noqa: E402

PROMPTS = [
    "Give me three tips for learning a new language.",
    "What is the capital of France, and why is it famous?",
    "Write a short poem about rain in the city.",
    "Explain photosynthesis to a ten-year-old.",
    "List five prime numbers and say what makes a number prime.",
    "How do I make a good cup of tea?",
    "Why is the sky blue?",
    "Suggest a name for a cat and explain your choice.",
]
NAME = "smollm2"


def smollm2_checkpoint(root: Path) -> Path:
    """SmolLM2-135M-Instruct as a checkpoint folder (as tests/conftest.py's smollm2_checkpoint), built once."""
    from treasure.models.packaged import smollm2_hf_dir
    from treasure.taxonomy import load_taxonomy

    out = root / "smollm2_checkpoint"
    if (out / "treasure.json").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    for f in smollm2_hf_dir().iterdir():
        if not (out / f.name).exists():
            (out / f.name).symlink_to(f)
    tax = load_taxonomy("paper")
    (out / "taxonomy.yaml").write_text(tax.to_yaml())
    (out / "treasure.json").write_text(json.dumps({
        "markers": False, "taxonomy_version": tax.version, "data_manifest_id": None,
        "config": {}, "step": 0, "quality_reference": {}}))
    return out


class VLLMServer:
    """vLLM's OpenAI server as a child process in a session of its own (stopped with its engine core)."""

    def __init__(self, model: Path, port: int, kv_gib: int, log: Path):
        self.cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
                    "--host", "127.0.0.1", "--port", str(port), "--dtype", "bfloat16", "--max-model-len", "2048",
                    "--enforce-eager", "--max-num-seqs", "32", "--served-model-name", NAME, "--seed", "0",
                    "--disable-log-stats", "--uvicorn-log-level", "warning"]
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": str(kv_gib)}
        self.log = log
        self.port = port
        log.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(self.cmd, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def wait_ready(self, timeout: float) -> None:
        import httpx

        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vLLM server exited ({self.proc.returncode}); log tail:\n"
                                   + "".join(self.log.read_text().splitlines(True)[-30:]))
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise TimeoutError(f"vLLM server not ready after {timeout:.0f} s (log: {self.log})")

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)  # its own process group: the server and its engine core
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
            except ProcessLookupError:
                pass

    def binding(self) -> list[str]:
        """vLLM's OpenMP thread binding lines from its log (which cores its engine computes on)."""
        text = self.log.read_text() if self.log.exists() else ""
        return [ln.strip() for ln in text.splitlines() if "core ids=" in ln or "reserved_cpus" in ln][:4]


async def one_request(client, url: str, body: dict) -> dict:
    """One streamed chat completion: latency, TTFT, completion tokens from the final usage, text."""
    t0 = time.perf_counter()
    ttft, usage, text, error = None, None, [], None
    try:
        async with client.stream("POST", url, json=body) as r:
            if r.status_code != 200:
                await r.aread()
                return {"error": f"HTTP {r.status_code}: {r.text[:200]}"}
            async for line in r.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                obj = json.loads(data)
                if obj.get("error"):
                    error = str(obj["error"])[:200]
                if obj.get("usage"):
                    usage = obj["usage"]
                for ch in obj.get("choices") or []:
                    piece = (ch.get("delta") or {}).get("content")
                    if piece:
                        if ttft is None:
                            ttft = time.perf_counter() - t0
                        text.append(piece)
    except Exception as e:  # noqa: BLE001 - a failed request is counted, not fatal
        return {"error": f"{type(e).__name__}: {e}"[:200]}
    if error or usage is None:
        return {"error": error or "stream ended without usage"}
    return {"latency": time.perf_counter() - t0, "ttft": ttft, "completion_tokens": usage["completion_tokens"],
            "prompt_tokens": usage.get("prompt_tokens"), "text": "".join(text)}


async def run_cell(client, url: str, bodies: list[dict], clients: int) -> tuple[list[dict], float]:
    """`len(bodies)` requests from `clients` closed-loop clients; results in request order and the wall time."""
    todo = list(range(len(bodies)))[::-1]
    results: list[dict | None] = [None] * len(bodies)

    async def worker() -> None:
        while todo:
            k = todo.pop()
            results[k] = await one_request(client, url, bodies[k])

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    return results, time.perf_counter() - t0


def diverge(k: int, ours: str, theirs: str) -> dict:
    """Where two answers to request `k` part: the common prefix's length and each text from a little before."""
    i = next((j for j, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
    return {"request": k, "prompt": PROMPTS[k % len(PROMPTS)], "same_chars": i, "lengths": [len(ours), len(theirs)],
            "ours_from": ours[max(0, i - 40):i + 80], "vllm_from": theirs[max(0, i - 40):i + 80]}


def cell_summary(results: list[dict], wall: float) -> dict:
    ok = [r for r in results if "error" not in r]
    errors = [r["error"] for r in results if "error" in r]
    if not ok:
        return {"requests": len(results), "ok": 0, "errors": errors[:5], "wall_s": round(wall, 2)}
    lat = [r["latency"] * 1000 for r in ok]
    ttft = [r["ttft"] * 1000 for r in ok if r["ttft"] is not None]
    toks = sum(r["completion_tokens"] for r in ok)
    return {
        "requests": len(results), "ok": len(ok), "wall_s": round(wall, 2),
        "output_tokens_per_s": round(toks / wall, 2), "requests_per_s": round(len(ok) / wall, 3),
        "p50_latency_ms": round(pct(lat, 50), 1), "p99_latency_ms": round(pct(lat, 99), 1),
        "p50_ttft_ms": round(pct(ttft, 50), 1) if ttft else None,
        "p99_ttft_ms": round(pct(ttft, 99), 1) if ttft else None,
        "completion_tokens": toks, "mean_completion_tokens": round(toks / len(ok), 1),
        "mean_prompt_tokens": round(statistics.mean(r["prompt_tokens"] or 0 for r in ok), 1),
        "errors": errors[:5], "n_errors": len(errors),
    }


METRICS = ("output_tokens_per_s", "requests_per_s", "p50_latency_ms", "p99_latency_ms", "p50_ttft_ms", "p99_ttft_ms",
           "mean_completion_tokens", "mean_prompt_tokens")


def median_of(cells: list[dict]) -> dict:
    out = {}
    for m in METRICS:
        xs = [c[m] for c in cells if c.get(m) is not None]
        out[m] = round(statistics.median(xs), 3) if xs else None
    out["n_errors"] = sum(c.get("n_errors", len(c.get("errors", []))) for c in cells)
    return out


def ratio(a, b):
    return round(a / b, 3) if a is not None and b else None


def markdown(med: dict, levels: list[int], scaling: dict) -> str:
    def pair(c, m, digits=1):
        o, v = med["ours"][str(c)].get(m), med["vllm"][str(c)].get(m)
        r = ratio(o, v)
        return (f"{'-' if o is None else f'{o:.{digits}f}'} / {'-' if v is None else f'{v:.{digits}f}'} "
                f"({'-' if r is None else f'{r:.2f}'})")

    rows = ["| clients | output tok/s | requests/s | p50 latency ms | p99 latency ms | p50 TTFT ms | p99 TTFT ms "
            "| mean output tokens |",
            "|---|---|---|---|---|---|---|---|"]
    for c in levels:
        if str(c) not in med["ours"] or str(c) not in med["vllm"]:
            continue
        rows.append(f"| {c} | {pair(c, 'output_tokens_per_s')} | {pair(c, 'requests_per_s', 2)} "
                    f"| {pair(c, 'p50_latency_ms', 0)} | {pair(c, 'p99_latency_ms', 0)} | {pair(c, 'p50_ttft_ms', 0)} "
                    f"| {pair(c, 'p99_ttft_ms', 0)} | {pair(c, 'mean_completion_tokens')} |")
    rows.append("")
    rows.append("Each cell: ours / vLLM's server (ratio ours/vLLM), median over rounds.")
    for key, v in scaling.items():
        rows.append(f"Scaling, output tok/s {key}: ours {v['ours']}x, vLLM {v['vllm']}x.")
    return "\n".join(rows)


async def bench(a, bodies_for, urls, levels, deadline, start) -> tuple[list[dict], dict, str | None]:
    import httpx

    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    timeout = httpx.Timeout(a.request_timeout)
    clients = {s: httpx.AsyncClient(limits=limits, timeout=timeout) for s in urls}
    rounds, texts, stopped = [], {}, None
    try:
        for s in urls:  # warm-up: lazy init on both sides, then one burst so both have seen a batch
            for r in await asyncio.gather(*(one_request(clients[s], urls[s], b) for b in bodies_for[s][:1])):
                if "error" in r:
                    raise RuntimeError(f"{s}: warm-up request failed: {r['error']}")
            await run_cell(clients[s], urls[s], bodies_for[s][:8], 8)
        for rep in range(a.repeats):
            order = list(urls) if rep % 2 == 0 else list(urls)[::-1]
            cells: dict[str, dict] = {s: {} for s in urls}
            for c in levels:
                for s in order:
                    if time.monotonic() > deadline:
                        stopped = f"time cap: stopped before round {rep + 1}, {c} clients, {s}"
                        break
                    results, wall = await run_cell(clients[s], urls[s], bodies_for[s], c)
                    cells[s][str(c)] = cell_summary(results, wall)
                    print(f"[{time.monotonic() - start:7.1f} s] round {rep + 1} {s:4s} {c:2d} clients: "
                          + json.dumps({k: cells[s][str(c)].get(k) for k in METRICS[:6]}), flush=True)
                    if rep == 0 and c == levels[0]:
                        texts[s] = [r.get("text") for r in results]
                if stopped:
                    break
            rounds.append(cells)
            if stopped:
                break
    finally:
        for cl in clients.values():
            await cl.aclose()
    same = None
    if len(texts) == 2:
        pairs = [(x, y) for x, y in zip(texts["ours"], texts["vllm"]) if x is not None and y is not None]
        differ = [(k, x, y) for k, (x, y) in enumerate(zip(texts["ours"], texts["vllm"]))
                  if x is not None and y is not None and x != y]
        same = {"requests": len(pairs), "identical": len(pairs) - len(differ),
                "first_differences": [diverge(k, x, y) for k, x, y in differ[:2]]}
    return rounds, same, stopped


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default=None, help="checkpoint folder (default: SmolLM2-135M-Instruct, built once)")
    ap.add_argument("--clients", default="1,8,32", help="comma-separated concurrent clients (each 1..32)")
    ap.add_argument("--requests", type=int, default=64, help="requests per server and cell (<= 256)")
    ap.add_argument("--max-tokens", type=int, default=64, help="max_tokens of every request (<= 512)")
    ap.add_argument("--repeats", type=int, default=2, help="rounds over all cells (<= 5)")
    ap.add_argument("--kv-cache-gib", type=int, default=2, help="VLLM_CPU_KVCACHE_SPACE of both engines")
    ap.add_argument("--request-timeout", type=float, default=300.0, help="seconds per request")
    ap.add_argument("--start-timeout", type=float, default=900.0, help="seconds for both servers to come up")
    ap.add_argument("--time-cap", type=float, default=2400.0, help="hard stop after this many seconds in all")
    ap.add_argument("--work-dir", default=str(REPO / "runs" / "serve_bench"))
    ap.add_argument("--out", default=None, help="also write the JSON report here")
    a = ap.parse_args()
    levels = [int(x) for x in a.clients.split(",") if x.strip()]
    if not (levels and all(1 <= c <= 32 for c in levels) and 1 <= a.requests <= 256 and 1 <= a.max_tokens <= 512
            and 1 <= a.repeats <= 5 and a.time_cap > 0):
        ap.error("bounds: clients 1..32 each, requests 1..256, max-tokens 1..512, repeats 1..5")
    start = time.monotonic()
    load_at_start = os.getloadavg()
    work = Path(a.work_dir)
    ckpt = Path(a.checkpoint) if a.checkpoint else smollm2_checkpoint(work)

    port_ours, port_vllm = free_port(), free_port()
    vllm = VLLMServer(ckpt, port_vllm, a.kv_cache_gib, work / "vllm_server.log")

    def hard_stop() -> None:  # the wall-clock bound: never run away, never leave the child behind
        print(f"time cap of {a.time_cap:.0f} s reached: stopping", file=sys.stderr, flush=True)
        vllm.stop()
        os._exit(3)

    timer = threading.Timer(a.time_cap, hard_stop)
    timer.daemon = True
    timer.start()

    import ray
    from ray import serve

    from treasure.serving.app import build_app

    env = {"RAY_AUTH_MODE": os.environ["RAY_AUTH_MODE"], "TOKENIZERS_PARALLELISM": "false",
           "VLLM_CPU_KVCACHE_SPACE": str(a.kv_cache_gib),
           "PYTHONPATH": os.pathsep.join([str(REPO / "platform"), str(REPO)]
                                         + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))}
    for k in ("HF_HUB_OFFLINE", "VLLM_CPU_OMP_THREADS_BIND"):
        if k in os.environ:
            env[k] = os.environ[k]
    ours_args = {"checkpoint": str(ckpt), "model_name": NAME, "engine": "vllm", "dtype": "bfloat16", "num_cpus": 1,
                 "max_ongoing_requests": 32, "max_queued_requests": 64, "kv_cache_gib": a.kv_cache_gib,
                 "max_tokens_limit": max(a.max_tokens, 128), "default_max_tokens": a.max_tokens}
    try:
        # address="local": a Ray instance of our own, never someone else's running cluster.
        ray.init(address="local", num_cpus=2, _node_ip_address="127.0.0.1", include_dashboard=False,
                 log_to_driver=False, runtime_env={"env_vars": env})
        serve.start(http_options={"host": "127.0.0.1", "port": port_ours})
        t = time.monotonic()
        serve.run(build_app(ours_args), name="ours", route_prefix="/")
        ours_ready = time.monotonic() - t
        vllm.wait_ready(max(1.0, a.start_timeout - (time.monotonic() - start)))
        ready_s = round(time.monotonic() - start, 1)
        print(f"both servers up after {ready_s} s (ours deployed in {ours_ready:.1f} s)", flush=True)

        def body(k: int, model: str) -> dict:
            return {"model": model, "messages": [{"role": "user", "content": PROMPTS[k % len(PROMPTS)]}],
                    "max_tokens": a.max_tokens, "temperature": 0, "stream": True,
                    "stream_options": {"include_usage": True}}

        bodies_for = {s: [body(k, NAME) for k in range(a.requests)] for s in ("ours", "vllm")}
        urls = {"ours": f"http://127.0.0.1:{port_ours}/v1/chat/completions",
                "vllm": f"http://127.0.0.1:{port_vllm}/v1/chat/completions"}
        # Leave time for the shutdown after the last cell (the hard stop comes at the cap itself).
        deadline = start + a.time_cap - max(60.0, 0.1 * a.time_cap)
        rounds, same, stopped = asyncio.run(bench(a, bodies_for, urls, levels, deadline, start))
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            binding = vllm.binding()
            vllm.stop()
            timer.cancel()

    med = {s: {str(c): median_of([r[s][str(c)] for r in rounds if str(c) in r[s]])
               for c in levels if any(str(c) in r[s] for r in rounds)} for s in ("ours", "vllm")}
    ratios = {str(c): {m: ratio(med["ours"][str(c)].get(m), med["vllm"][str(c)].get(m)) for m in METRICS[:6]}
              for c in levels if str(c) in med["ours"] and str(c) in med["vllm"]}
    scaling = {}
    if "1" in med["ours"] and "1" in med["vllm"]:
        for c in levels:
            if c > 1 and str(c) in med["ours"] and str(c) in med["vllm"]:
                scaling[f"{c}_vs_1_clients"] = {
                    s: ratio(med[s][str(c)]["output_tokens_per_s"], med[s]["1"]["output_tokens_per_s"])
                    for s in ("ours", "vllm")}
    import vllm as vllm_pkg

    report = {
        "checkpoint": str(ckpt), "vllm_version": vllm_pkg.__version__, "clients": levels,
        "requests_per_cell": a.requests, "max_tokens": a.max_tokens, "temperature": 0, "rounds": len(rounds),
        "ours": {"deployment": ours_args}, "vllm_server": {"cmd": vllm.cmd[1:], "omp_binding": binding},
        "servers_ready_after_s": ready_s,
        "identical_texts_first_round_first_level": same, "stopped": stopped,
        "median_over_rounds": med, "ratio_ours_over_vllm": ratios, "scaling_output_tokens_per_s": scaling,
        "per_round": rounds,
        "load_average_at_start": load_at_start, "load_average_at_end": os.getloadavg(),
        "wall_s": round(time.monotonic() - start, 1),
    }
    emit(report, a.out)
    print()
    print(markdown(med, levels, scaling))


if __name__ == "__main__":
    main()
