"""Shards of the annotate stage: row ranges of the input, and each finished shard's files.

A shard is finished when its `done.json` exists (written after its data and errors files), under
the stage contract's scratch folder (``<output>/_staging/<config key>/shards/<shard>/``), so a
rerun of the same config skips it and a different config never reuses it.
"""

from __future__ import annotations

import json

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from treasure import storage
from treasure.annotate.config import AnnotateConfig
from treasure.annotate.workers import is_missing
from treasure.stage import STAGING, key_hash

ERROR_COLUMNS = ["id", "stage", "reason", "raw"]


def plan_shards(input_uri: str, manifest: dict, shard_rows: int, max_rows: int) -> list[dict]:
    """Row-range shards over the input's data files, each with its share of the tagger budget."""
    specs = []
    for entry in sorted(manifest["files"], key=lambda e: e["path"]):
        if not entry["path"].startswith("data/"):
            continue
        uri = storage.join(input_uri, entry["path"])
        fs, path = storage.filesystem(uri)
        n = pq.ParquetFile(fs.open_input_file(path)).metadata.num_rows
        stem = entry["path"].rsplit("/", 1)[-1].removesuffix(".parquet")
        for start in range(0, n, shard_rows):
            specs.append({"shard": f"{stem}-{start:09d}", "file": uri, "start": start, "stop": min(n, start + shard_rows)})
    for i, s in enumerate(specs):  # split the tagger's cap evenly, so a shard's choice never depends on others
        s["tag_budget"] = max_rows // len(specs) + (1 if i < max_rows % len(specs) else 0)
    return specs


def shard_dir(cfg: AnnotateConfig, shard: str) -> str:
    """The shard's folder in the stage's scratch (keyed by the config, as the contract keys it)."""
    return storage.join(cfg.output, STAGING, key_hash(cfg), "shards", shard)


def _write_table(uri: str, df: pd.DataFrame) -> None:
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), sink)
    storage.write_bytes(uri, sink.getvalue().to_pybytes())


def error_rows(rows: list[dict]) -> pd.DataFrame:
    """The errors-table rows: id, stage, reason, raw (row JSON, 2,000 characters at most)."""
    keep = ("id", "source", "prompt", "response", "metadata")
    out = [{"id": r["id"] if isinstance(r["id"], str) else None, "stage": r["_error_stage"], "reason": r["_error"],
            "raw": json.dumps({k: r[k] if isinstance(r[k], str) or r[k] is None else repr(r[k]) for k in keep}, ensure_ascii=False)[:2000]}
           for r in rows if r["_error"] is not None]
    return pd.DataFrame(out, columns=ERROR_COLUMNS).astype(object)


def write_shard(cfg: AnnotateConfig, shard: str, df: pd.DataFrame) -> dict:
    """Data + errors files of one shard, then done.json (last, so a crash never marks a half shard)."""
    base = shard_dir(cfg, shard)
    # Plain records: Ray's pandas batches may carry Arrow-backed columns that boolean masks trip on.
    rows = [{k: (None if is_missing(v) else v) for k, v in r.items()} for r in df.to_dict("records")]
    good = [{k: v for k, v in r.items() if k not in ("_error", "_error_stage", "_shard")} for r in rows if r["_error"] is None]
    errs = error_rows(rows)
    columns = [c for c in df.columns if c not in ("_error", "_error_stage", "_shard")]
    _write_table(storage.join(base, "data.parquet"), pd.DataFrame(good, columns=columns).astype(object))
    _write_table(storage.join(base, "errors.parquet"), errs)
    done = {"shard": shard, "rows": len(good), "error_rows": len(errs), "input_rows": len(rows)}
    storage.write_bytes(storage.join(base, "done.json"), json.dumps(done).encode())
    return done


def read_done(cfg: AnnotateConfig, shard: str) -> dict | None:
    return storage.read_json_or_none(storage.join(shard_dir(cfg, shard), "done.json"), "shard marker")
