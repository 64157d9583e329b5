"""Call the model server with the official openai client (markers as an extra body field).

    .venv/bin/python serving/client_example.py --base-url http://127.0.0.1:8000/v1 [--api-key TOKEN]
    .venv/bin/python serving/client_example.py --lengths --prompt "Explain why the sky is blue."   # one prompt, every length

The server must be running (`serve run treasure.serving.app:build_app checkpoint=...`). With auth on, pass
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
    ap.add_argument("--lengths", action="store_true", help="ask the prompt under every length_bucket value and no marker")
    ap.add_argument("--max-tokens", type=int, default=64)
    a = ap.parse_args()
    client = OpenAI(base_url=a.base_url, api_key=a.api_key)
    model = client.models.list().data[0].id  # the one model this server serves
    print("model:", model)
    if a.lengths:
        return compare_lengths(client, model, a.prompt, a.max_tokens)

    # Fix the length and the language; the model infers every other marker.
    out = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": a.prompt}], max_tokens=64,
        extra_body={"markers": {"length_bucket": "concise", "language": "English"}},
    )
    print("answer:", out.choices[0].message.content)
    print("markers:", json.dumps(out.model_extra["markers"]))
    print("usage:", out.usage.model_dump())

    done = client.completions.create(model=model, prompt=a.prompt, max_tokens=32, extra_body={"markers": {"length_bucket": "concise"}})
    print("completion:", done.choices[0].text, "| finish_reason:", done.choices[0].finish_reason)

    print("streamed: ", end="", flush=True)
    for chunk in client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": a.prompt}], max_tokens=64, stream=True,
        extra_body={"markers": {"length_bucket": "concise"}},
    ):
        print(chunk.choices[0].delta.content or "", end="", flush=True)
        if chunk.choices[0].finish_reason:
            print("\nmarkers:", json.dumps(chunk.model_extra["markers"]))


def compare_lengths(client: OpenAI, model: str, prompt: str, max_tokens: int) -> None:
    """The same prompt with no marker, then with each length value the served taxonomy allows (greedy)."""
    import httpx

    taxonomy = httpx.get(str(client.base_url).rstrip("/") + "/taxonomy",
                         headers={"Authorization": f"Bearer {client.api_key}"}).json()
    values = next(c["allowed"] for c in taxonomy["categories"] if c["name"] == "length_bucket")
    for value in [None, *values]:
        out = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens, temperature=0,
            extra_body={"markers": {"length_bucket": value} if value else {}},
        )
        text = out.choices[0].message.content
        print(f"--- length_bucket={value or '(inferred)'}: {len(text.split())} words, "
              f"finish_reason={out.choices[0].finish_reason}, markers={json.dumps(out.model_extra['markers'])}")
        print(text)


if __name__ == "__main__":
    main()
