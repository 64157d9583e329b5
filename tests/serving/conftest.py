"""Serving fixtures: a real Serve app on the shared local Ray, reachable over HTTP on 127.0.0.1.

`serve_app(**overrides)` (module-scoped factory) deploys `treasure.serving.app:build_app` for the tiny
checkpoint with the given ServeConfig overrides and returns its base URL; the app is deleted when
the module's tests are done. Reliability tests (issue 9) reuse it.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # `serving` is a top-level folder of the repository
    sys.path.insert(0, str(REPO))

from ports import free_port  # noqa: E402  (one helper for every area)


@pytest.fixture(scope="session")
def serve_http(ray_local):
    """Serve's HTTP proxy on a free loopback port for the session; yields the base URL."""
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


@pytest.fixture(scope="module")
def serve_app(serve_http, tiny_checkpoint):
    """Factory: deploy the app with ServeConfig overrides under a fresh route; returns its base URL."""
    import httpx
    from ray import serve

    from treasure.serving.app import build_app

    names = []

    def deploy(**overrides) -> str:
        name = f"treasure{len(names)}_{os.getpid()}_{int(time.time() * 1000) % 100000}"
        args = {"checkpoint": str(tiny_checkpoint), "num_cpus": 0.25, "engine": "transformers", **overrides}
        serve.run(build_app(args), name=name, route_prefix=f"/{name}")
        names.append(name)
        base = f"{serve_http}/{name}"
        deadline = time.time() + 60
        while time.time() < deadline:  # the route goes live a moment after the app is running
            try:
                if httpx.get(f"{base}/healthz", timeout=5).status_code == 200:
                    return base
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"{base}/healthz did not answer 200 within 60 s")

    yield deploy
    for name in names:
        serve.delete(name)
