"""Evaluation fixtures: a small committed annotated dataset (real parquet + manifest)."""

from __future__ import annotations

import json

import pytest

# length_tokens as annotation counts the words: only the photosynthesis answer is longer than the
# paper taxonomy's concise limit (299 words), so it is the pool of over-limit prompts.
PROMPTS = [
    ("Write a short poem about the sea.", "The sea is wide and blue.", {"task": "CreativeWriting", "domain": "Culture", "language": "English", "length_bucket": "concise", "length_tokens": "6"}),
    ("Explain photosynthesis.", "Plants turn light into sugar. " * 70, {"task": "Explanation", "domain": "Sciences", "language": "English", "length_bucket": "medium", "length_tokens": "350"}),
    ("Translate 'hello' into French.", "Bonjour", {"task": "Translation", "domain": "Conversation", "language": "English", "length_bucket": "concise", "length_tokens": "1"}),
    ("Write a Python function that adds two numbers.", "```python\ndef add(a, b):\n    return a + b\n```", {"task": "CodeGeneration", "domain": "Code", "language": "English", "format": "Markdown", "code_type": "python", "length_bucket": "concise", "length_tokens": "14"}),
    ("¿Qué es un contrato?", "Un contrato es un acuerdo legal entre dos partes.", {"task": "Explanation", "domain": "Legal", "language": "Spanish", "length_bucket": "concise", "length_tokens": "9"}),
]


def write_annotated(folder, n_rows: int = 200) -> str:
    """n_rows annotated rows cycling over PROMPTS (ids distinct), committed with a manifest."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from treasure import storage

    rows = []
    for i in range(n_rows):
        p, r, m = PROMPTS[i % len(PROMPTS)]
        rows.append({"id": f"test:{i:04d}", "prompt": f"{p} (#{i})", "response": r, "source": "test", "language": m["language"],
                     "metadata": "{}", "markers": json.dumps(m), "provenance": "{}"})
    uri = str(folder)
    (folder / "data").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), folder / "data" / "part-00000.parquet")
    storage.commit_manifest(uri, [storage.join(uri, "data/part-00000.parquet")], {"rows": n_rows})
    return uri


@pytest.fixture(scope="session")
def annotated_uri(tmp_path_factory):
    return write_annotated(tmp_path_factory.mktemp("annotated"))


@pytest.fixture(scope="session")
def judge_server():
    """The scripted OpenAI-compatible judge on 127.0.0.1 (tests/evaluate/judge_stub_server.py)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("judge_stub_server", Path(__file__).with_name("judge_stub_server.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    server = module.start()
    yield server
    server.shutdown()
