"""The marker playground: a static page (index.html, playground.js, playground.css beside this file)
that treasure/serving/app.py serves at /playground/ (docs/serving.md#playground).

No build step and no external assets: the machines reach no CDN, so everything the page uses is in
these three files. The page holds no secret and is served without auth; the API calls it makes
carry the bearer token typed into it. Its Content-Security-Policy lets it load only its own files
and talk only to its own origin (other Serve applications behind the same proxy, e.g. a baseline
model under /baseline, are same-origin).
"""

from __future__ import annotations

from importlib.resources import files

# The page's files, by the name it asks for, with their media types: nothing else is served.
ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "playground.js": "text/javascript; charset=utf-8",
    "playground.css": "text/css; charset=utf-8",
}

HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                               "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def asset(name: str) -> tuple[bytes, str]:
    """(content, media type) of one of the page's files; KeyError for any other name.

    >>> body, media = asset("index.html")
    >>> media, body.startswith(b"<!doctype html>")
    ('text/html; charset=utf-8', True)
    """
    media = ASSETS[name]
    return (files(__package__) / name).read_bytes(), media
