"""Where a request's time goes inside the replica, as a standard `Server-Timing` response header.

The replica measures its phases (parse, prepare, queue, engine, respond, total) and reports them in
milliseconds, e.g. `parse;dur=0.05, prepare;dur=0.42, queue;dur=0.31, engine;dur=81.2, ...`.
A client subtracts `total` from the latency it saw to get the cost of everything outside the
replica's handler (HTTP, Serve's proxy, the proxy → replica hop); the load test does exactly that.
"""

from __future__ import annotations

import re

_ENTRY = re.compile(r"\s*([A-Za-z0-9_-]+)\s*;\s*dur=([0-9.]+)\s*")


def server_timing(phases_s: dict[str, float]) -> str:
    """The header value for {phase: seconds}, durations in milliseconds (3 decimals)."""
    return ", ".join(f"{name};dur={max(0.0, s) * 1000:.3f}" for name, s in phases_s.items())


def parse_server_timing(value: str | None) -> dict[str, float]:
    """{phase: milliseconds} from a header value; entries without a duration are skipped."""
    out: dict[str, float] = {}
    for part in (value or "").split(","):
        m = _ENTRY.fullmatch(part)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out
