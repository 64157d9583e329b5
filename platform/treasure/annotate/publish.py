"""Publishing the annotate stage: finished shards → final parts, errors table, report (staged; the
stage contract, treasure.stage, moves them into place and commits the manifest last).

quality_bucket needs every row's quality (quartiles per language), so it is set here, over all
shards. Before the manifest is written, the row invariant (input rows = annotated rows + error
rows) and id uniqueness are checked; a violation raises and nothing is committed.
"""

from __future__ import annotations

import io
import json

import pandas as pd
import pyarrow.parquet as pq

from treasure import storage
from treasure.annotate.merge import prov
from treasure.annotate.quality import quality_buckets
from treasure.annotate.shards import ERROR_COLUMNS, shard_dir
from treasure.annotate.report import marker_report, report_markdown, report_png
from treasure.heldout import is_derived

OUTPUT_COLUMNS = ["id", "prompt", "response", "source", "language", "metadata", "markers", "provenance"]


def _read(uri: str) -> pd.DataFrame:
    return pq.read_table(io.BytesIO(storage.read_bytes(uri))).to_pandas()


def _write(uri: str, df: pd.DataFrame) -> None:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    storage.write_bytes(uri, buf.getvalue())


def add_quality_buckets(df: pd.DataFrame, model: str) -> pd.DataFrame:
    """Set quality_bucket in markers/provenance from `_quality` grouped by `_lang`."""
    buckets = quality_buckets(list(df["_lang"]), [None if pd.isna(q) else float(q) for q in df["_quality"]])
    markers, provenance = [], []
    for m_json, p_json, b in zip(df["markers"], df["provenance"], buckets):
        m, p = json.loads(m_json), json.loads(p_json)
        if b is not None:
            m["quality_bucket"] = b
            p["quality_bucket"] = prov("reward", model, "quartile-per-language")
        markers.append(m)
        provenance.append(p)
    return df.assign(markers=markers, provenance=provenance)


def publish(cfg, taxonomy, specs: list[dict], source_manifest: dict, attempt, metrics: dict):
    """The final output of all (finished) shards written to the attempt's staging; returns the
    stage's Result (summary and manifest fields: the contract commits them)."""
    import mlflow

    from treasure.stage import Result

    frames, errors = [], []
    for s in specs:
        base = shard_dir(cfg, s["shard"])
        frames.append(_read(storage.join(base, "data.parquet")).assign(_part=s["shard"]))
        errors.append(_read(storage.join(base, "errors.parquet")))
    data = pd.concat(frames, ignore_index=True)
    errs = pd.concat(errors, ignore_index=True) if errors else pd.DataFrame(columns=ERROR_COLUMNS)
    input_rows = sum(s["stop"] - s["start"] for s in specs)
    if input_rows != len(data) + len(errs):
        raise RuntimeError(f"row invariant broken: {input_rows} input rows != {len(data)} annotated + {len(errs)} errors; nothing committed")
    ids = pd.concat([data["id"], errs["id"].dropna()])
    if ids.duplicated().any():
        raise RuntimeError(f"duplicate ids in the output: {ids[ids.duplicated()].head(5).tolist()}; nothing committed")
    if cfg.quality.enabled and "quality_bucket" in taxonomy.names and len(data):
        data = add_quality_buckets(data, cfg.quality.engine)
    else:
        data = data.assign(markers=[json.loads(m) for m in data["markers"]], provenance=[json.loads(p) for p in data["provenance"]])
    data["markers"] = [json.dumps(taxonomy.validate_markers(m), ensure_ascii=False) for m in data["markers"]]
    data["provenance"] = [json.dumps({k: p[k] for k in taxonomy.names if k in p}, ensure_ascii=False) for p in data["provenance"]]

    for part, df in data.groupby("_part", sort=True):
        uri = attempt.path(f"data/part-{part}.parquet")
        _write(uri, df[OUTPUT_COLUMNS])
    err_uri = attempt.path("errors/part-00000.parquet")
    _write(err_uri, errs[ERROR_COLUMNS])

    # Length variants (treasure.corpus.length_variants) get their own rows in the per-source table.
    sources = [f"{s} (variants)" if is_derived(i) else s for s, i in zip(data["source"], data["id"])]
    report = marker_report([json.loads(m) for m in data["markers"]], taxonomy, cfg.tail_share, sources=sources)
    if cfg.tagger.enabled and cfg.tagger.engine == "distilled":  # teacher coverage, agreement, accuracy, Unspecified
        from treasure.annotate.report import tagger_summary
        from treasure.annotate.student import student_dir

        student = json.loads(storage.read_bytes(storage.join(student_dir(cfg), "student.json")))
        report["tagger"] = tagger_summary([json.loads(p) for p in data["provenance"]], cfg.tagger.categories, student)
    report_files = {"json": json.dumps(report, indent=2, ensure_ascii=False).encode(),
                    "md": report_markdown(report).encode(), "png": report_png(report)}
    for ext, blob in report_files.items():
        uri = attempt.path(f"report/marker_report.{ext}")
        storage.write_bytes(uri, blob)
        if ext != "png":
            mlflow.log_text(blob.decode(), f"report/marker_report.{ext}")
    mlflow.log_image(_png_array(report_files["png"]), "report/marker_report.png")

    tagged = sum(1 for p in data["provenance"] for c in json.loads(p).values() if c["by"] in ("llm", "distilled") and not str(c.get("note") or "").startswith("not tagged"))
    seconds = attempt.seconds()
    all_metrics = {**metrics, "seconds": seconds, "rows": len(data), "error_rows": len(errs), "input_rows": input_rows,
                   "tagger_answers": tagged, "rows_per_s": round(input_rows / max(seconds, 1e-9), 2)}
    mlflow.log_metrics({k: float(v) for k, v in all_metrics.items()})
    print(f"annotate: input rows {input_rows} = annotated {len(data)} + errors {len(errs)}", flush=True)
    return Result(summary={"metrics": all_metrics}, manifest={
        "rows": len(data), "error_rows": len(errs), "input_rows": input_rows,
        "input_manifest_id": source_manifest["manifest_id"], "taxonomy_version": taxonomy.version})


def _png_array(png: bytes):
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
