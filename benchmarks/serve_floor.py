"""Serve's own fixed cost per request, split by hop: how low can the Serve path's overhead go here?

    .venv/bin/python benchmarks/serve_floor.py --requests 300
    RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD=0 .venv/bin/python benchmarks/serve_floor.py   # a Serve knob

One process, one run, all paths alternating request by request (so machine-load drift hits all alike),
every endpoint doing the same trivial work (parse a small JSON body, return a constant):
- `uvicorn_fastapi`: FastAPI under uvicorn in a child process, no Ray: the floor of HTTP + ASGI + a
  second process on this machine;
- `serve_fastapi_http`: a Serve deployment with a FastAPI ingress (the shape of treasure/serving/app.py),
  through Serve's HTTP proxy;
- `serve_plain_http`: a Serve deployment whose `__call__` takes the Starlette request (no FastAPI);
- `serve_handle`: the plain deployment called through a DeploymentHandle from this process
  (Serve's router + the Ray actor call, no HTTP, no proxy).
The knobs Serve read in the replica (from its RAY_SERVE_* environment) are reported with the numbers.
Bounded: at most 2000 requests per path; loopback only; its own local Ray cluster.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # loadtest.py sits next to this script

from loadtest import emit, free_port  # noqa: E402

KNOBS = ("RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD", "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP",
         "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE", "RAY_SERVE_LOG_TO_STDERR", "RAY_SERVE_USE_GRPC_BY_DEFAULT",
         "RAY_SERVE_PROXY_USE_GRPC", "RAY_SERVE_ENABLE_DIRECT_INGRESS")

UVICORN_APP = textwrap.dedent("""
    import json, sys
    import uvicorn
    from fastapi import FastAPI, Request
    api = FastAPI()
    @api.post("/ping")
    async def ping(request: Request):
        json.loads(await request.body())
        return {"ok": True}
    uvicorn.run(api, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
""")


def apps():
    from ray import serve

    from loadtest import empty_app  # the same FastAPI ingress the load test times

    @serve.deployment(name="EmptyPlain", ray_actor_options={"num_cpus": 0})
    class EmptyPlain:
        async def __call__(self, request):
            json.loads(await request.body())
            return {"ok": True}

        def knobs(self) -> dict:
            from ray.serve._private import constants

            return {k: getattr(constants, k, None) for k in KNOBS}

        async def ping(self, body: bytes) -> dict:  # the DeploymentHandle path
            json.loads(body)
            return {"ok": True}

    return empty_app(), EmptyPlain.bind()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=300, help="requests per path (<= 2000)")
    ap.add_argument("--out", default=None, help="also write the JSON report here")
    a = ap.parse_args()
    if not 1 <= a.requests <= 2000:
        ap.error("requests: 1..2000")
    import httpx
    import ray
    from ray import serve

    uport = free_port()
    uv = subprocess.Popen([sys.executable, "-c", UVICORN_APP, str(uport)])
    serve_env = {k: v for k, v in os.environ.items() if k.startswith("RAY_SERVE_")}
    ray.init(num_cpus=2, _node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"RAY_AUTH_MODE": os.environ["RAY_AUTH_MODE"], **serve_env}})
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        fast, plain = apps()
        serve.run(fast, name="fast", route_prefix="/fast")
        handle = serve.run(plain, name="plain", route_prefix="/plain")
        knobs = handle.knobs.remote().result()
        body = json.dumps({"prompt": "Why is the sky blue?", "markers": {"domain": "Sciences"}, "max_tokens": 16}).encode()
        hdr = {"content-type": "application/json"}
        lat: dict[str, list[float]] = {"uvicorn_fastapi": [], "serve_fastapi_http": [], "serve_plain_http": [],
                                       "serve_handle": []}
        with httpx.Client(timeout=30) as c:
            calls = {
                "uvicorn_fastapi": lambda: c.post(f"http://127.0.0.1:{uport}/ping", content=body, headers=hdr).raise_for_status(),
                "serve_fastapi_http": lambda: c.post(f"http://127.0.0.1:{port}/fast/ping", content=body, headers=hdr).raise_for_status(),
                "serve_plain_http": lambda: c.post(f"http://127.0.0.1:{port}/plain", content=body, headers=hdr).raise_for_status(),
                "serve_handle": lambda: handle.ping.remote(body).result(),
            }
            deadline = time.time() + 30
            while True:  # the uvicorn child needs a moment to bind
                try:
                    calls["uvicorn_fastapi"]()
                    break
                except httpx.HTTPError:
                    if time.time() > deadline:
                        raise
                    time.sleep(0.2)
            for f in calls.values():  # warm-up
                for _ in range(10):
                    f()
            names = list(calls)
            for i in range(a.requests):
                for j in range(len(names)):
                    name = names[(i + j) % len(names)]
                    t = time.perf_counter()
                    calls[name]()
                    lat[name].append(time.perf_counter() - t)
    finally:
        uv.terminate()
        serve.shutdown()
        ray.shutdown()

    def q(xs, p):
        xs = sorted(xs)
        return round(xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))] * 1000, 3)

    report = {
        "requests_per_path": a.requests, "serve_env": serve_env, "knobs_in_replica": knobs,
        "paths": {k: {"p50_ms": q(v, 50), "p95_ms": q(v, 95), "mean_ms": round(statistics.mean(v) * 1000, 3)}
                  for k, v in lat.items()},
        "load_average_at_end": os.getloadavg(),
    }
    emit(report, a.out)


if __name__ == "__main__":
    main()
