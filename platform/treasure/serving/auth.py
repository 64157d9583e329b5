"""Optional bearer-token auth: compare the Authorization header with the configured secret.

The token comes from an environment variable (named in ServeConfig.auth_token_env), never from
code or config files, and is compared in constant time. Messages never echo what was sent.
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
        raise RuntimeError(f"auth_token_env={env_name!r} is set but that environment variable is empty or missing")
    return token


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
