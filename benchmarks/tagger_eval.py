"""Tagger accuracy on the hand-labelled set (data/tagger_eval/tagger_eval.jsonl), per category.

Run:  .venv/bin/python benchmarks/tagger_eval.py [--config pipelines/configs/demo.yaml] [--limit N] [--out FILE]
Uses the config's tagger (engine, model, mode, prompt version). The tagger reads the prompt for
every category here (the set has no responses); format is scored only where it is labelled.
Writes one JSON line per prompt as it goes, so an interrupted run still reports what it did.
"""

import argparse
import json
from collections import Counter

from treasure.annotate.config import AnnotateConfig
from treasure.annotate.tagger import build_prompt, outcome
from treasure.annotate.tagger_engines import load_engine
from treasure.config import load_config
from treasure.taxonomy import load_taxonomy


def summarize(records: list[dict]) -> dict:
    out = {}
    for cat in ("domain", "task", "format"):
        done = [r for r in records if r.get(f"{cat}_gold") and f"{cat}_pred" in r]
        if done:
            hits = sum(r[f"{cat}_pred"] == r[f"{cat}_gold"] for r in done)
            out[cat] = {"n": len(done), "accuracy": round(hits / len(done), 3),
                        "predicted": dict(Counter(r[f"{cat}_pred"] for r in done).most_common(5))}
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="pipelines/configs/demo.yaml")
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--out", default="runs/tagger_eval.jsonl")
    args = ap.parse_args()
    cfg = load_config(AnnotateConfig, args.config, section="annotate").tagger
    taxonomy = load_taxonomy("paper")
    engine = load_engine(cfg.engine, cfg.model, cfg.max_new_tokens)
    prompts = {c: build_prompt(taxonomy, c, cfg.prompt_version) for c in ("domain", "task", "format")}
    items = [json.loads(line) for line in open("data/tagger_eval/tagger_eval.jsonl", encoding="utf-8")][: args.limit]
    records = []
    with open(args.out, "w", encoding="utf-8") as f:
        for item in items:
            rec = {"source_id": item["source_id"]}
            for cat, p in prompts.items():
                if not item.get(cat):
                    continue
                raw, conf = engine.answer(p, [item["prompt"][: cfg.max_prompt_chars]], cfg.mode)[0]
                value, _ = outcome(cat, p.labels, raw, conf, cfg.min_confidence)
                rec.update({f"{cat}_gold": item[cat], f"{cat}_pred": value or "Unspecified", f"{cat}_raw": raw})
            records.append(rec)
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            f.flush()
    print(json.dumps({"engine": f"{cfg.engine}/{cfg.mode}", "model": engine.model_name, "prompt_version": cfg.prompt_version,
                      "results": summarize(records)}, indent=2))
