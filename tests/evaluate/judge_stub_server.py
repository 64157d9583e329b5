"""A scripted OpenAI-compatible judge on 127.0.0.1 (a real HTTP peer for the HTTP judge's tests).

The verdict depends on the judged text, so swapping the order changes it the way a real judge would:
    question contains MALFORMED   → prose without a verdict
    question contains CONFLICT    → two different verdicts
    question contains BADJSON     → HTTP 200 whose body is not JSON
    question contains SERVERERROR → HTTP 500
    question contains POSITION    → always [[A]] (pure position bias)
    otherwise                     → [[A]] if A's answer contains GOOD, [[B]] if B's does, else [[C]]
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep test output quiet
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.seen.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        text = body["messages"][-1]["content"]
        question = text.split("[The Start of Assistant A's Answer]")[0]
        a = re.search(r"A's Answer\]\n(.*?)\n\[The End of Assistant A", text, re.S).group(1)
        b = re.search(r"B's Answer\]\n(.*?)\n\[The End of Assistant B", text, re.S).group(1)
        if "SERVERERROR" in question:
            return self._send(500, b"boom")
        if "BADJSON" in question:
            return self._send(200, b"{not json")
        if "MALFORMED" in question:
            verdict = "Both answers have merit; I cannot decide."
        elif "CONFLICT" in question:
            verdict = "[[A]] ... on reflection [[B]]"
        elif "POSITION" in question:
            verdict = "First is best. [[A]]"
        else:
            verdict = "[[A]]" if "GOOD" in a else "[[B]]" if "GOOD" in b else "[[C]]"
        reply = {"id": "x", "object": "chat.completion", "model": body["model"],
                 "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": f"Reasoning. {verdict}"}}]}
        self._send(200, json.dumps(reply).encode())

    def _send(self, code: int, payload: bytes):
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def start() -> ThreadingHTTPServer:
    """Serve on 127.0.0.1 (free port) in a daemon thread; `server.url` is the /v1 base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.seen = []
    server.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
