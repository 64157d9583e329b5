"""The Ray Data callables of the annotate stage: shard reader (task), tagger and finisher (actors).

Each wraps the pure annotators; rows travel as pandas batches with private columns
`_shard`, `_cands` (candidate markers, JSON), `_to_tag`, `_lang`, `_error`, `_error_stage`.
"""

from __future__ import annotations

import json
import time
from functools import lru_cache

import pandas as pd
import pyarrow.parquet as pq

from treasure import storage
from treasure.annotate.annotators import (
    annotate_shard,
    candidates_from_json,
    candidates_to_json,
)
from treasure.annotate.config import AnnotateConfig
from treasure.annotate.merge import Candidate, merge, prov
from treasure.taxonomy import load_taxonomy

INPUT_COLUMNS = ["id", "prompt", "response", "source", "language", "metadata"]


def is_missing(v) -> bool:
    """None, NaN or pd.NA: Ray's Arrow round trips turn a null into any of them."""
    return v is None or (not isinstance(v, (str, bytes, list, dict)) and bool(pd.isna(v)))


def error_state(batch: pd.DataFrame) -> tuple[list, list]:
    """(errors, stages) of a batch as plain lists with None for 'no error'."""
    return ([None if is_missing(e) else e for e in batch["_error"]],
            [None if is_missing(e) else e for e in batch["_error_stage"]])


def rows_to_tag(batch: pd.DataFrame, errors: list):
    """(index, row, categories to tag) for each row of `batch` that has categories left for the
    LLM tagger and no error yet (both tagger paths walk a batch this way)."""
    for i, row in enumerate(batch.to_dict("records")):
        todo = json.loads(row["_to_tag"]) if isinstance(row["_to_tag"], str) else []
        if errors[i] is None and todo:
            yield i, row, todo


def read_rows(file_uri: str, start: int, stop: int) -> list[dict]:
    """Rows [start, stop) of one input Parquet file, as dicts (missing columns read as None)."""
    fs, path = storage.filesystem(file_uri)
    table = pq.read_table(path, filesystem=fs)
    table = table.slice(start, stop - start)
    rows = table.to_pylist()
    return [{c: r.get(c) for c in INPUT_COLUMNS} for r in rows]


@lru_cache(maxsize=4)
def cached_taxonomy(ref: str):
    """The taxonomy, parsed once per worker process (Ray reuses task workers; parsing costs ~50 ms a shard)."""
    return load_taxonomy(ref)


def read_and_annotate(spec: dict, *, config: dict) -> pd.DataFrame:
    """Ray task body for one shard spec: read its rows, run the cheap annotators."""
    cfg = AnnotateConfig.model_validate(config)
    taxonomy = cached_taxonomy(cfg.taxonomy)
    rows = read_rows(spec["file"], spec["start"], spec["stop"])
    res = annotate_shard(rows, cfg, taxonomy, spec["tag_budget"])
    df = pd.DataFrame(rows, columns=INPUT_COLUMNS).astype(object)
    df["_shard"] = spec["shard"]
    df["_cands"] = [candidates_to_json(c) for c in res.candidates]
    df["_to_tag"] = [json.dumps(t) for t in res.to_tag]
    df["_lang"] = res.languages
    df["_error"] = res.errors
    df["_error_stage"] = ["rules" if e else None for e in res.errors]
    return df


def read_shard_batch(batch: pd.DataFrame, *, config: dict) -> pd.DataFrame:
    frames = [read_and_annotate(spec, config=config) for spec in batch.to_dict("records")]
    return pd.concat(frames, ignore_index=True)


def tagger_version(t) -> str:
    """The engine/mode/scoring part of the tagger's provenance `version` (after the prompt variant)."""
    if t.mode != "score":
        return f"{t.engine}/{t.mode}"
    return f"{t.engine}/score+{t.calibration}+{t.score_norm}" + ("+end" if t.score_end else "")


class Tagger:
    """Actor: the LLM tagger over the rows chosen for it; everything else passes through."""

    def __init__(self, config: dict):
        import torch

        from treasure.annotate.tagger import build_prompt
        from treasure.annotate.tagger_engines import engine_for

        self.cfg = AnnotateConfig.model_validate(config)
        torch.set_num_threads(max(1, int(self.cfg.tagger.pool.num_cpus)))
        taxonomy = load_taxonomy(self.cfg.taxonomy)
        t = self.cfg.tagger
        self.prompts = {c: build_prompt(taxonomy, c, t.prompt_version, definitions=t.definitions, few_shot=t.few_shot)
                        for c in t.categories}
        self.engine = engine_for(t)
        self.version = tagger_version(t)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        from treasure.annotate.tagger import outcome, row_text

        t = self.cfg.tagger
        cands = list(batch["_cands"])
        errors, stages = error_state(batch)
        for i, row, todo in rows_to_tag(batch, errors):
            start, added = time.monotonic(), []
            try:
                for cat in todo:
                    p = self.prompts[cat]
                    raw, conf = self.engine.answer(p, [row_text(p, row, t.max_prompt_chars)], t.mode)[0]
                    value, note = outcome(cat, p.labels, raw, conf, t.min_confidence)
                    pv = prov("llm", self.engine.model_name, f"{p.version}/{self.version}",
                              None if conf is None else round(conf, 4), raw[:200], note)
                    added.append(Candidate(cat, value, pv))
            except Exception as e:  # a tagger failure is a per-row outcome, recorded in the errors table
                errors[i], stages[i] = f"tagger error: {type(e).__name__}: {e}", "tagger"
                continue
            if time.monotonic() - start > t.timeout_s:
                errors[i], stages[i] = f"tagger timeout: took over {t.timeout_s}s", "tagger"
                continue
            cands[i] = candidates_to_json(candidates_from_json(cands[i]) + added)
        return batch.assign(_cands=cands, _error=errors, _error_stage=stages)


class Finisher:
    """Actor: quality score (optional) and the merge of all candidates into markers + provenance."""

    def __init__(self, config: dict):
        from treasure.annotate.quality import load_scorer

        self.cfg = AnnotateConfig.model_validate(config)
        self.taxonomy = load_taxonomy(self.cfg.taxonomy)
        q = self.cfg.quality
        self.scorer = load_scorer(q.engine, q.model, q.max_tokens) if q.enabled else None

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        errors, stages = error_state(batch)
        ok = [i for i, e in enumerate(errors) if e is None]
        scores: dict[int, float] = {}
        if self.scorer is not None and ok:
            values = self.scorer.score([batch["prompt"].iat[i] for i in ok], [batch["response"].iat[i] for i in ok])
            scores = dict(zip(ok, values))
        markers, provenance, quality = [None] * len(batch), [None] * len(batch), [None] * len(batch)
        for i in ok:
            cands = candidates_from_json(batch["_cands"].iat[i])
            if i in scores:
                if scores[i] != scores[i] or abs(scores[i]) == float("inf"):
                    errors[i], stages[i] = "quality: score is not a finite number", "quality"
                    continue
                quality[i] = scores[i]
                cands.append(Candidate("quality", str(scores[i]), prov("reward", self.scorer.model_name, self.cfg.quality.engine)))
            try:
                m, p = merge(cands, self.cfg.precedence, self.taxonomy)
            except ValueError as e:
                errors[i], stages[i] = f"merge: {e}", "merge"
                continue
            markers[i], provenance[i] = json.dumps(m, ensure_ascii=False), json.dumps(p, ensure_ascii=False)
            quality[i] = scores.get(i)
        return batch.drop(columns=["_cands", "_to_tag"]).assign(
            markers=markers, provenance=provenance, _quality=quality, _error=errors, _error_stage=stages)
