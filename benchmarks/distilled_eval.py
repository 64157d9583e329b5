"""Distilled tagger accuracy on the hand-labelled set, by k-fold cross-validation, per teacher and head setting.

Run:  .venv/bin/python benchmarks/distilled_eval.py [--config pipelines/configs/demo.yaml] [--folds 5]
                                                    [--teachers metadata,file,metadata+file] [--heads linear,mlp256]
                                                    [--seeds 0,1,2,3,4,5]
                                                    [annotate overrides, e.g. tagger.distilled.max_tokens=128]
Needs the committed normalized corpus of the config (`annotate.input`; `pipelines/normalize.py` writes it).
Teachers: `metadata` = the labels the config's `metadata:` mapping gives corpus rows; `file` = the
hand-labelled set itself (data/tagger_eval/tagger_eval.jsonl). Every setting is scored on all 400
hand-labelled prompts out of fold: fold f's prompts are scored by a student trained without them
(also without corpus rows with the same prompt), so no scored prompt was trained on. The encoder
runs once (embeddings reused by every setting). Prints one line per setting and category:
accuracy (argmax) with its Wilson 95% interval, the majority-class baseline, the target, and the
accuracy when answers below `--min-confidence` become Unspecified.
"""

import argparse
import glob
import json
import os
import statistics
import time

import numpy as np
import pyarrow.parquet as pq

from treasure.annotate.config import AnnotateConfig
from treasure.annotate.distilled import (
    cross_validate,
    merge_examples,
    metadata_examples,
    read_label_file,
    student_text,
    text_key,
)
from treasure.annotate.student import student_encoder
from treasure.config import load_config

CATEGORIES = ["domain", "task", "format"]
HAND = "data/tagger_eval/tagger_eval.jsonl"
TARGET_POINTS = {"domain": 0.25, "task": 0.25}  # over the majority class; format: an absolute 60%


def corpus_rows(uri: str) -> list[dict]:
    rows = []
    for path in sorted(glob.glob(f"{uri}/data/*.parquet")):
        rows += pq.read_table(path, columns=["id", "prompt", "source", "metadata"]).to_pylist()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="pipelines/configs/demo.yaml")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--teachers", default="metadata,file,metadata+file")
    ap.add_argument("--heads", default="linear", help="linear, mlpN (one hidden layer of N), each optionally +none (no class "
                    "weights), +l2=X, +file=W (a hand label weighs W metadata labels; also metadata=W, llm=W)")
    ap.add_argument("--min-confidence", type=float, default=None, help="default: the config's tagger.min_confidence")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--seeds", default=None, help="comma-separated seeds (fold split and head initialisation), e.g. 0,1,2,3,4,5: "
                    "one line per seed, then the spread (default: the config's seed only)")
    ap.add_argument("--cache", default=None, help="an .npz of the embeddings: written on the first run, read on later ones "
                    "(only for reruns with the same encoder, max_tokens, max_prompt_chars, corpus)")
    ap.add_argument("overrides", nargs="*", help="annotate config overrides, e.g. tagger.distilled.max_tokens=128")
    args = ap.parse_args()

    cfg = load_config(AnnotateConfig, args.config, args.overrides, section="annotate")
    d = cfg.tagger.distilled
    thr = cfg.tagger.min_confidence if args.min_confidence is None else args.min_confidence
    hand = read_label_file(open(HAND, encoding="utf-8").read(), CATEGORIES)
    meta = merge_examples(metadata_examples(corpus_rows(cfg.input), cfg.metadata, CATEGORIES))
    print(f"hand-labelled prompts {len(hand)}; corpus prompts with a metadata label {len(meta)}", flush=True)

    enc = student_encoder(d)
    if args.cache and os.path.exists(args.cache):  # embeddings of an earlier run with the same settings
        cached = np.load(args.cache)
        X_meta, X_hand = cached["meta"], cached["hand"]
        print(f"embeddings from {args.cache}", flush=True)
    else:
        t0 = time.perf_counter()
        X_meta = enc.encode([student_text({"prompt": e.text}, cfg.tagger.max_prompt_chars) for e in meta])
        X_hand = enc.encode([student_text({"prompt": e.text}, cfg.tagger.max_prompt_chars) for e in hand])
        print(f"encoder {d.encoder} ({enc.dtype}, max_tokens {d.max_tokens}): {len(meta) + len(hand)} prompts in "
              f"{time.perf_counter() - t0:.1f}s", flush=True)
        if args.cache:
            np.savez(args.cache, meta=X_meta, hand=X_hand)

    results = []
    for teacher in args.teachers.split(","):
        parts = teacher.split("+")
        # As the stage merges them: one example per prompt, the hand label first where both label it.
        examples = merge_examples(*([hand] if "file" in parts else []), *([meta] if "metadata" in parts else []))
        row_of = {text_key(e.text): x for e, x in zip(meta, X_meta)} | {text_key(e.text): x for e, x in zip(hand, X_hand)}
        X = np.stack([row_of[text_key(e.text)] for e in examples])
        for head in args.heads.split(","):
            fit = head_settings(head, d)
            seeds = [int(x) for x in args.seeds.split(",")] if args.seeds else [cfg.seed]
            by_seed = {}
            for seed in seeds:
                res = by_seed[seed] = cross_validate(X, examples, X_hand, hand, CATEGORIES, folds=args.folds,
                                                     min_confidence=thr, seed=seed, **fit)
                for cat, r in res.items():
                    a, t = r["argmax"], r["at_threshold"]
                    target = a["majority_accuracy"] + TARGET_POINTS[cat] if cat in TARGET_POINTS else 0.60
                    print(f"{teacher:14s} {head:12s} {cat:7s} seed {seed} n={a['n']:3d} acc {a['accuracy']:.3f} "
                          f"[{a['ci95'][0]:.3f}, {a['ci95'][1]:.3f}] majority {a['majority']} {a['majority_accuracy']:.3f} "
                          f"target {target:.3f} {'MET' if a['accuracy'] >= target else 'missed'} | at conf>={thr}: "
                          f"acc {t['accuracy']:.3f}, unspecified {t['unspecified_share']:.3f}", flush=True)
            spread = {}
            if len(seeds) > 1:
                for cat in by_seed[seeds[0]]:
                    accs = [by_seed[s_][cat]["argmax"]["accuracy"] for s_ in seeds]
                    spread[cat] = {"median": statistics.median(accs), "min": min(accs), "max": max(accs), "by_seed": accs}
                    print(f"{teacher:14s} {head:12s} {cat:7s} over seeds {args.seeds}: median {spread[cat]['median']:.3f}, "
                          f"range {min(accs):.3f}-{max(accs):.3f}", flush=True)
            results.append({"teacher": teacher, "head": head, "results": by_seed[seeds[0]], "seeds": seeds,
                            "by_seed": {str(k): v for k, v in by_seed.items()}, "spread": spread})
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump({"config": args.config, "encoder": d.encoder, "max_tokens": d.max_tokens, "layers": enc.layers, "dtype": enc.dtype,
                       "folds": args.folds, "min_confidence": thr, "settings": results}, f, indent=1)


def head_settings(spec: str, d) -> dict:
    """'mlp256+none+l2=0.001+file=5' → {hidden: 256, balanced: False, l2: 0.001, source_weights: {file: 5}}
    (defaults from the config)."""
    out = {"hidden": d.hidden, "l2": d.l2, "balanced": d.class_weight == "balanced"}
    if d.teacher.source_weights:
        out["source_weights"] = dict(d.teacher.source_weights)
    for part in spec.split("+"):
        if part == "linear":
            out["hidden"] = 0
        elif part.startswith("mlp"):
            out["hidden"] = int(part[3:])
        elif part == "none":
            out["balanced"] = False
        elif part.startswith("l2="):
            out["l2"] = float(part[3:])
        elif "=" in part and part.split("=")[0] in ("file", "metadata", "llm"):
            source, weight = part.split("=")
            out["source_weights"] = {**out.get("source_weights", {}), source: float(weight)}
        else:
            raise ValueError(f"head setting {part!r}: use linear, mlpN, none, l2=X, file=W / metadata=W / llm=W")
    return out


if __name__ == "__main__":
    main()
