"""A free TCP port on the loopback interface, for the real servers the tests start (Serve, moto,
`mlflow server`, `mlflow models serve`, a gloo rendezvous) and for an address where nothing
listens (an unreachable tracking server): one helper for every test area."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port nothing listens on right now (the OS picks it; the socket is closed before returning)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
