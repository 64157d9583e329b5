"""Small committed normalized corpora for the annotate tests (imported by name: a module, not conftest,
so any subset of test folders collects)."""

from __future__ import annotations

import io
import json

GOOD = [
    ("chitchat", "hey, how was your day?", "Pretty good! I went for a walk in the park.", "English",
     {"domain_hint": "Conversation", "task_hint": "OpenEnded", "style": "Informal"}),
    ("mathematics", "Solve 3*x + 7 = 22 for x.", "5", "English", {"domain_hint": "Math", "task_hint": "Reasoning"}),
    ("arena-hard", "Write a python function that reverses a list.",
     "Here is one:\n\n```python\ndef rev(xs):\n    return xs[::-1]\n```\n\nIt returns a new list.", None,
     {"subcategory": "coding", "domain_hint": "Code"}),
    ("alpaca-zh", "解释为什么天空是蓝色的。", "天空是蓝色的，因为大气散射了太阳光中的蓝光。这叫做瑞利散射。", "Chinese", {}),
    ("self-instruct", "List three fruits.", "1. Apple\n2. Banana\n3. Cherry", "English", {"motivation_app": "Tasty"}),
]
MAPPING = {
    "chitchat": {"fields": {"domain_hint": {"Conversation": {"domain": "Conversation"}},
                            "task_hint": {"OpenEnded": {"task": "OpenEnded"}}, "style": {"Informal": {"style": "Informal"}}}},
    "mathematics": {"markers": {"source": "Synthetic"},
                    "fields": {"domain_hint": {"Math": {"domain": "Math"}}, "task_hint": {"Reasoning": {"task": "Reasoning"}}}},
    "arena-hard": {"fields": {"domain_hint": {"Code": {"domain": "Code"}}}},
    "self-instruct": {"fields": {"motivation_app": {"Tasty": {"domain": "Culture"}}}},
}


def make_rows(n: int, bad: bool = True) -> list[dict]:
    """n good rows cycling over GOOD (distinct ids), plus malformed rows when `bad`."""
    rows = []
    for i in range(n):
        source, prompt, response, language, meta = GOOD[i % len(GOOD)]
        rows.append({"id": f"{source}:{i:016x}", "prompt": f"{prompt} (#{i})", "response": response, "source": source,
                     "language": language, "metadata": json.dumps(meta, ensure_ascii=False)})
    if bad:
        rows += [
            {"id": "bad:empty", "prompt": "Say something.", "response": "   ", "source": "chitchat", "language": None, "metadata": "{}"},
            {"id": "bad:meta", "prompt": "Hello?", "response": "Hi.", "source": "chitchat", "language": None, "metadata": "{not json"},
            {"id": "bad:null", "prompt": None, "response": "orphan answer", "source": "chitchat", "language": None, "metadata": "{}"},
        ]
    return rows


def write_normalized(uri: str, rows: list[dict], rows_per_file: int = 1000) -> str:
    """A committed normalized corpus at `uri` (docs/data-formats.md), local or s3://."""
    import pandas as pd

    from treasure import storage

    files = []
    for k in range(0, len(rows), rows_per_file):
        buf = io.BytesIO()
        pd.DataFrame(rows[k: k + rows_per_file]).to_parquet(buf, index=False)
        f = storage.join(uri, "data", f"part-{k // rows_per_file:05d}.parquet")
        storage.write_bytes(f, buf.getvalue())
        files.append(f)
    storage.commit_manifest(uri, files, {"rows": len(rows)})
    return uri


def base_config(input_uri: str, output_uri: str, **over) -> dict:
    cfg = {"input": input_uri, "output": output_uri, "taxonomy": "paper", "experiment": "annotate-tests",
           "shard_rows": 8, "metadata": MAPPING, "tagger": {"enabled": False}, "quality": {"engine": "zipf"}}
    cfg.update(over)
    return cfg
