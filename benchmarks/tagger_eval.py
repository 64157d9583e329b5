"""Tagger accuracy on the hand-labelled set (data/tagger_eval/tagger_eval.jsonl), per category and variant.

Run:  .venv/bin/python benchmarks/tagger_eval.py [--config pipelines/configs/demo.yaml] [--prompts defs+shots,names]
                                                 [--mode score|generate] [--limit N] [--out-dir docs/results]
      .venv/bin/python benchmarks/tagger_eval.py --summarize docs/results/tagger_eval_smollm2_*.jsonl
Uses the config's tagger (engine, model, prompt version, scoring). Prompt variants: `defs`/`names`
(a definition per class, or class names only) and `+shots` (the prompt file's few-shot examples).
Score mode records every label's log-probability (summed, token count, end-token), so the scoring
variants (sum vs mean, with/without the end token, with/without contextual calibration on
content-free inputs) are all computed from one pass; the file's `pred` is the config's choice.
The tagger reads the prompt for every category (the set has no responses); format is scored only
where labelled. One JSON line per prompt, written as it goes (an interrupted run still reports).
"""

import argparse
import itertools
import json
import time
from collections import Counter

from treasure.annotate.config import AnnotateConfig
from treasure.annotate.tagger import (
    CONTENT_FREE,
    build_prompt,
    content_free_prior,
    outcome,
    pick_label,
)
from treasure.config import load_config
from treasure.taxonomy import load_taxonomy

CATEGORIES = ("domain", "task", "format")
DATA = "data/tagger_eval/tagger_eval.jsonl"


def prompt_flags(variant: str) -> dict:
    """'defs+shots' → {definitions: True, few_shot: True}; 'names' → both False."""
    parts = variant.split("+")
    if parts[0] not in ("defs", "names") or not set(parts[1:]) <= {"shots"}:
        raise ValueError(f"prompt variant {variant!r}: use defs|names, optionally +shots")
    return {"definitions": parts[0] == "defs", "few_shot": "shots" in parts[1:]}


def predict(cat: str, choices: list[str], labels: tuple, raw_scores, norm: str, end: bool, prior, min_conf: float) -> str:
    i, conf = pick_label(raw_scores, norm, end, prior)
    value, _ = outcome(cat, labels, choices[i], conf, min_conf)
    return value or "Unspecified"


def accuracy(pairs: list[tuple[str, str]]) -> dict:
    return {"n": len(pairs), "accuracy": round(sum(p == g for g, p in pairs) / len(pairs), 3),
            "predicted": dict(Counter(p for _, p in pairs).most_common(4))}


def summarize_file(path: str, min_conf: float = 0.0) -> list[dict]:
    """One row per scoring setting (score files) or one row (generate files): accuracy per category."""
    with open(path, encoding="utf-8") as f:
        lines = [json.loads(x) for x in f]
    head, items = lines[0], lines[1:]
    out = []
    if head["mode"] == "generate":
        row = {"file": path, "prompt": head["prompt"], "mode": "generate"}
        for cat in CATEGORIES:
            pairs = [(r[f"{cat}_gold"], r[f"{cat}_pred"]) for r in items if r.get(f"{cat}_gold")]
            if pairs:
                row[cat] = accuracy(pairs)
                row[cat]["off_list"] = sum(r[f"{cat}_off_list"] for r in items if r.get(f"{cat}_gold"))
        return [row]
    for norm, end, cal in itertools.product(("sum", "mean"), (False, True), ("none", "content_free")):
        row = {"file": path, "prompt": head["prompt"], "mode": "score", "score_norm": norm, "score_end": end, "calibration": cal}
        for cat in CATEGORIES:
            if cat not in head["choices"]:
                continue
            choices, labels = head["choices"][cat], tuple(head["labels"][cat])
            prior = content_free_prior(head["content_free"][cat], norm, end) if cal == "content_free" else None
            pairs = [(r[f"{cat}_gold"], predict(cat, choices, labels, r[f"{cat}_scores"], norm, end, prior, min_conf))
                     for r in items if r.get(f"{cat}_gold")]
            if pairs:
                row[cat] = accuracy(pairs)
        out.append(row)
    return out


def majority(items: list[dict]) -> dict:
    out = {}
    for cat in CATEGORIES:
        gold = [i[cat] for i in items if i.get(cat)]
        if not gold:
            continue
        label, count = Counter(gold).most_common(1)[0]
        out[cat] = {"label": label, "accuracy": round(count / len(gold), 3)}
    return out


def run(cfg, variant: str, mode: str, items: list[dict], out_path: str) -> None:
    from treasure.annotate.tagger_engines import engine_for

    taxonomy = load_taxonomy("paper")
    engine = engine_for(cfg)
    prompts = {c: build_prompt(taxonomy, c, cfg.prompt_version, **prompt_flags(variant)) for c in CATEGORIES}
    head = {"kind": "header", "prompt": variant, "prompt_version": prompts["domain"].version, "mode": mode,
            "engine": cfg.engine, "model": engine.model_name, "max_prompt_chars": cfg.max_prompt_chars,
            "config_scoring": {"calibration": cfg.calibration, "score_norm": cfg.score_norm, "score_end": cfg.score_end},
            "choices": {c: list(p.choices) for c, p in prompts.items()}, "labels": {c: list(p.labels) for c, p in prompts.items()}}
    t0 = time.perf_counter()
    if mode == "score":
        head["content_free"] = {c: engine.label_logprobs(p, list(CONTENT_FREE)) for c, p in prompts.items()}
        head["content_free_inputs"] = list(CONTENT_FREE)
    with open(out_path, "w", encoding="utf-8") as f:
        f.write(json.dumps(head, ensure_ascii=False) + "\n")
        for item in items:
            rec = {"source_id": item["source_id"]}
            for cat, p in prompts.items():
                if not item.get(cat):
                    continue
                text = item["prompt"][: cfg.max_prompt_chars]
                rec[f"{cat}_gold"] = item[cat]
                if mode == "score":
                    scores = engine.label_logprobs(p, [text])[0]
                    prior = content_free_prior(head["content_free"][cat], cfg.score_norm, cfg.score_end) if cfg.calibration == "content_free" else None
                    rec[f"{cat}_scores"] = [[round(a, 4), n, round(e, 4)] for a, n, e in scores]
                    rec[f"{cat}_pred"] = predict(cat, list(p.choices), p.labels, scores, cfg.score_norm, cfg.score_end, prior, cfg.min_confidence)
                else:
                    raw, conf = engine.answer(p, [text], "generate")[0]
                    value, note = outcome(cat, p.labels, raw, conf, cfg.min_confidence)
                    rec.update({f"{cat}_pred": value or "Unspecified", f"{cat}_raw": raw,
                                f"{cat}_off_list": note == "unspecified: answer not in the class list"})
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            f.flush()
    seconds = time.perf_counter() - t0
    n_rows = sum(1 for i in items for c in CATEGORIES if i.get(c))
    print(json.dumps({"prompt": variant, "mode": mode, "seconds": round(seconds, 1), "row_categories": n_rows,
                      "tokens_run": engine.tokens_run,
                      "prefix_tokens_per_category": {c: engine._prefix[f"{c}@{p.version}"][0] for c, p in prompts.items()
                                                     if f"{c}@{p.version}" in engine._prefix}}), flush=True)


def print_table(paths: list[str], items: list[dict]) -> None:
    base = majority(items)
    print("| prompt | mode | scoring | domain | task | format |")
    print("|---|---|---|---|---|---|")
    print("| majority class | - | - | " + " | ".join(f"{base[c]['accuracy']:.0%} ({base[c]['label']})" if c in base else "-" for c in CATEGORIES) + " |")
    for path in paths:
        for row in summarize_file(path):
            scoring = "-" if row["mode"] == "generate" else f"{row['score_norm']}{'+end' if row['score_end'] else ''}, {row['calibration']}"
            cells = []
            for c in CATEGORIES:
                r = row.get(c)
                cells.append("-" if r is None else f"{r['accuracy']:.0%}" + (f" ({r['off_list']} off-list)" if "off_list" in r else ""))
            print(f"| {row['prompt']} | {row['mode']} | {scoring} | " + " | ".join(cells) + " |")
    print(json.dumps({"details": [summarize_file(p) for p in paths]}, ensure_ascii=False))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="pipelines/configs/demo.yaml")
    ap.add_argument("--prompts", default="defs+shots", help="comma-separated prompt variants: defs|names[+shots]")
    ap.add_argument("--mode", choices=["score", "generate"], default=None, help="default: the config's tagger.mode")
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--out-dir", default="runs")
    ap.add_argument("--summarize", nargs="*", help="only print the accuracy table of these result files")
    args = ap.parse_args()
    with open(DATA, encoding="utf-8") as f:
        items = [json.loads(line) for line in f][: args.limit]
    if args.summarize:
        print_table(args.summarize, items)
    else:
        cfg = load_config(AnnotateConfig, args.config, section="annotate").tagger
        mode = args.mode or cfg.mode
        paths = []
        for variant in args.prompts.split(","):
            paths.append(f"{args.out_dir}/tagger_eval_{cfg.model.rsplit('/', 1)[-1].removeprefix('packaged:')}_{variant}_{mode}.jsonl")
            run(cfg, variant, mode, items, paths[-1])
        print_table(paths, items)
