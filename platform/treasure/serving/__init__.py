"""Serving: the pure parts of the HTTP model server (schemas, prompting, limits, auth, SSE, config).

The Ray Serve shell that wires them to an engine is `treasure.serving.app`.
"""
