"""Optional bearer-token auth: compare the Authorization header with the configured secret.

The token comes from an environment variable (named in ServeConfig.auth_token_env) of the replica's
own process, never from code, config files or a Ray runtime env (which the dashboard shows), and is
compared in constant time. Messages never echo what was sent. A server reachable beyond loopback
does not start without auth unless its config says so (`check_exposure`).
"""

from __future__ import annotations

import hmac
import os


class AuthError(PermissionError):
    """Missing or wrong credentials (HTTP 401)."""


def token_from_env(env_name: str | None) -> str | None:
    """The expected token, or None when auth is off; an error if the named variable is unset or empty."""
    if env_name is None:
        return None
    token = os.environ.get(env_name, "")
    if not token:
        raise RuntimeError(
            f"auth_token_env={env_name!r} is set but that environment variable is empty or missing in the replica's "
            "process: set it where the Ray node starts (the shell of `serve run` or `ray start`, or the pod's env "
            "from a Secret); it is never forwarded through a runtime env")
    return token


LOOPBACK = ("127.0.0.1", "::1", "localhost")


def check_exposure(auth_on: bool, host: str | None, allow_unauthenticated: bool) -> None:
    """Refuse to serve without auth where the HTTP proxy listens beyond loopback (`host` None: unknown).

    >>> check_exposure(False, "127.0.0.1", False)
    >>> check_exposure(True, "0.0.0.0", False)
    >>> check_exposure(False, "0.0.0.0", True)
    >>> check_exposure(False, "0.0.0.0", False)
    Traceback (most recent call last):
    ...
    RuntimeError: Serve's HTTP proxy listens on 0.0.0.0, beyond loopback, and auth is off: set auth_token_env (and that variable on the nodes), or allow_unauthenticated: true to serve openly on purpose
    """
    if auth_on or allow_unauthenticated or host in LOOPBACK:
        return
    raise RuntimeError(
        f"Serve's HTTP proxy listens on {host or 'an unknown host'}, beyond loopback, and auth is off: set auth_token_env "
        "(and that variable on the nodes), or allow_unauthenticated: true to serve openly on purpose")


def check_bearer(authorization: str | None, expected: str | None) -> None:
    """Pass when auth is off or the header is `Bearer <expected>`; AuthError otherwise."""
    if expected is None:
        return
    if not authorization:
        raise AuthError("missing Authorization header (expected 'Bearer <token>')")
    scheme, _, given = authorization.partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise AuthError("Authorization header must be 'Bearer <token>'")
    if not hmac.compare_digest(given.strip().encode(), expected.encode()):
        raise AuthError("invalid bearer token")
