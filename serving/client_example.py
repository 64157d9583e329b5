"""Call the model server with the official openai client (markers as an extra body field).

    .venv/bin/python serving/client_example.py --base-url http://127.0.0.1:8000/v1 [--api-key TOKEN]

The server must be running (`serve run serving.app:build_app checkpoint=...`). With auth on, pass
the token with --api-key or the OPENAI_API_KEY environment variable.
"""

import argparse
import json
import os

from openai import OpenAI


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    ap.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY", "unused"))
    ap.add_argument("--prompt", default="Give me one tip for learning Spanish.")
    a = ap.parse_args()
    client = OpenAI(base_url=a.base_url, api_key=a.api_key)

    # Fix the length and the language; the model infers every other marker.
    out = client.chat.completions.create(
        model="treasure", messages=[{"role": "user", "content": a.prompt}], max_tokens=64,
        extra_body={"markers": {"length_bucket": "concise", "language": "English"}},
    )
    print("answer:", out.choices[0].message.content)
    print("markers:", json.dumps(out.model_extra["markers"]))
    print("usage:", out.usage.model_dump())

    print("streamed: ", end="", flush=True)
    for chunk in client.chat.completions.create(
        model="treasure", messages=[{"role": "user", "content": a.prompt}], max_tokens=64, stream=True,
        extra_body={"markers": {"length_bucket": "concise"}},
    ):
        print(chunk.choices[0].delta.content or "", end="", flush=True)
        if chunk.choices[0].finish_reason:
            print("\nmarkers:", json.dumps(chunk.model_extra["markers"]))


if __name__ == "__main__":
    main()
