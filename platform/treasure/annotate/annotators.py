"""The cheap annotators of one shard, composed: metadata, language id, length rules, formats.

`annotate_shard(rows, ...)` turns normalized rows into candidate markers (see merge.py), an
error reason per bad row, and the rows chosen for the LLM tagger. Pure: no Ray, no I/O.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from treasure.annotators import langid, rules
from treasure.annotators import response_format as formats
from treasure.annotate.config import AnnotateConfig
from treasure.annotate.merge import Candidate, prov
from treasure.annotate.metadata import metadata_markers


@dataclass
class ShardResult:
    candidates: list[list[Candidate]]  # per row
    errors: list[str | None]  # per row: reason, or None when the row is fine
    languages: list[str | None]  # per row: language used for tokenization and quality buckets
    to_tag: list[list[str]] = field(default_factory=list)  # per row: categories the tagger will answer


def bad_text_reason(row: dict) -> str | None:
    """Why a row cannot be annotated (None when it can)."""
    for name in ("id", "prompt", "response"):
        value = row.get(name)
        if not isinstance(value, str):
            return f"bad text: {name} is {type(value).__name__}, not a string"
        if not value.strip():
            return f"bad text: {name} is empty"
        if "\x00" in value:
            return f"bad text: {name} contains a NUL character"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return f"bad text: {name} is not valid Unicode (lone surrogate)"
    return None


def tag_priority(seed: int, row_id: str) -> str:
    """Seeded hash deciding which rows the tagger takes when capped."""
    return hashlib.sha256(f"{seed}:{row_id}".encode()).hexdigest()


def annotate_shard(rows: list[dict], cfg: AnnotateConfig, taxonomy, tag_budget: int) -> ShardResult:
    """Candidates from metadata, langid and rules for each row; pick at most `tag_budget` rows to tag."""
    names = set(taxonomy.names)
    n = len(rows)
    result = ShardResult([[] for _ in range(n)], [bad_text_reason(r) for r in rows], [None] * n, [[] for _ in range(n)])
    for i, row in enumerate(rows):
        if result.errors[i]:
            continue
        try:
            meta = metadata_markers(row.get("source") or "", row.get("metadata"), row.get("language"), cfg.metadata)
        except ValueError as e:  # json.JSONDecodeError is a ValueError
            result.errors[i] = f"bad metadata: {e}"
            continue
        result.candidates[i] += [Candidate(k, v, prov("metadata", raw=f"source={row.get('source')}")) for k, v in meta.items() if k in names]
        lang = meta.get("language")
        if cfg.langid.enabled:
            found, p = langid.identify((row["prompt"] + "\n" + row["response"])[:1000])
            if found and p >= cfg.langid.min_confidence:
                result.candidates[i].append(Candidate("language", found, prov("rule", model=langid.MODEL, confidence=round(p, 4))))
                lang = lang or found
        result.languages[i] = lang
    _length_rules(rows, result, cfg, taxonomy)
    _format_rules(rows, result, cfg, names)
    _choose_tagged(rows, result, cfg, tag_budget)
    return result


def _length_rules(rows, result: ShardResult, cfg, taxonomy) -> None:
    wanted = [c for c in ("length_tokens", "length_sentences", "length_paragraphs", "length_bucket") if c in cfg.rules.categories and c in taxonomy.names]
    if not wanted:
        return
    bucket = taxonomy.category("length_bucket") if "length_bucket" in wanted else None
    by_lang: dict[str | None, list[int]] = {}
    for i, err in enumerate(result.errors):
        if err is None:
            by_lang.setdefault(result.languages[i], []).append(i)
    for lang, idx in by_lang.items():
        measured = rules.length_markers([rows[i]["response"] for i in idx], lang, bucket)
        for i, m in zip(idx, measured):
            model = f"spacy-blank-{rules.SPACY_CODES.get(lang or '', 'xx')}"
            result.candidates[i] += [Candidate(k, str(v), prov("rule", model=model)) for k, v in m.items() if k in wanted]


def _format_rules(rows, result: ShardResult, cfg, names) -> None:
    for i, err in enumerate(result.errors):
        if err is not None:
            continue
        response = rows[i]["response"]
        if "format" in cfg.rules.categories and "format" in names:
            fmt = formats.detect_format(response)
            if fmt:
                result.candidates[i].append(Candidate("format", fmt, prov("rule", model="formats-v1")))
        if "code_type" in cfg.rules.categories and "code_type" in names:
            code = formats.detect_code_type(response)
            if code:
                result.candidates[i].append(Candidate("code_type", code, prov("rule", model="formats-v1")))


def _choose_tagged(rows, result: ShardResult, cfg, tag_budget: int) -> None:
    """Mark which categories the tagger answers per row; rows over the budget get a 'not tagged' note."""
    if not cfg.tagger.enabled:
        return
    wanted: list[tuple[str, int]] = []
    for i, err in enumerate(result.errors):
        if err is not None:
            continue
        given = {c.category for c in result.candidates[i] if c.value is not None}
        cats = [c for c in cfg.tagger.categories if not (cfg.tagger.only_missing and c in given)]
        if cats:
            result.to_tag[i] = cats
            wanted.append((tag_priority(cfg.seed, rows[i]["id"]), i))
    wanted.sort()
    for _, i in wanted[tag_budget:]:
        for c in result.to_tag[i]:
            note = f"not tagged: over tagger.max_rows={cfg.tagger.max_rows}"
            result.candidates[i].append(Candidate(c, None, prov("llm", note=note)))
        result.to_tag[i] = []


def candidates_to_json(cands: list[Candidate]) -> str:
    return json.dumps([[c.category, c.value, c.provenance] for c in cands], ensure_ascii=False)


def candidates_from_json(text: str) -> list[Candidate]:
    return [Candidate(c, v, p) for c, v, p in json.loads(text)]
