"""How fast does a fine-tuned model learn the length marker? Train in one process, probe at checkpoints.

Run:  .venv/bin/python benchmarks/length_probe.py [--annotated runs/demo/annotated] [--steps 150]
      [--probe-at 70,150] [--prompts 24] [train-key=value ...]

The demo's `train:` section (pipelines/configs/demo.yaml, plus key=value overrides) decides the
model, data step, dropout, learning rate and held-out split; the loop is a plain torch loop (no
Ray, no checkpoints) over the product's own pieces: `format_epoch` with the demo's prompt budget,
`batch_order`, `collate`, `CompletionLM`, the LR schedule and the precision `auto` resolves to. At
each `--probe-at` step, `--prompts` held-out prompts whose reference answer is longer than the
concise limit are answered greedily under every `length_bucket` value, rendered and prefilled
exactly as serving and evaluation do (`template.render_request`), and the answers' words are
counted as annotation counts them. Prints one JSON line per probe: training seconds so far, mean
words, share in the requested bucket and share over the concise limit, per value, and each
prompt's word counts. The curve in docs/evaluation.md comes from this script.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "platform"))


def held_out_probe(rows, cfg, taxonomy, n: int, max_chars: int):
    from treasure.heldout import is_derived, is_heldout

    limit = int(taxonomy.category("length_bucket").buckets[0].below) - 1
    held = [r for r in rows if is_heldout(r["id"], cfg.heldout_seed, cfg.heldout_fraction) and not is_derived(r["id"])]
    eligible = [r for r in held if int(json.loads(r["markers"]).get("length_tokens", 0)) > limit and len(r["prompt"]) <= max_chars]
    random.Random(0).shuffle(eligible)
    return eligible[:n], limit


def probe(lm, tok, taxonomy, prompts, limit: int, max_tokens: int, autocast) -> dict:
    import torch

    from treasure.engine import prompt_token_ids
    from treasure.evaluate.adherence import reannotate, word_count
    from treasure.template import render_request, split_output

    out = {}
    tok.padding_side = "left"
    for value in taxonomy.category("length_bucket").allowed:
        words, hits = [], 0
        for start in range(0, len(prompts), 16):
            chunk = prompts[start:start + 16]
            reqs = [render_request(r["prompt"], {"length_bucket": value}, taxonomy) for r in chunk]
            enc = tok.pad({"input_ids": [prompt_token_ids(tok, t, p) for t, p in reqs]}, padding=True, return_tensors="pt")
            with torch.no_grad(), autocast():
                seqs = lm.generate(**enc, max_new_tokens=max_tokens, do_sample=False, pad_token_id=tok.pad_token_id,
                                   eos_token_id=tok.eos_token_id)
            for row, r, (_, prefix) in zip(seqs, chunk, reqs):
                new = row[enc["input_ids"].shape[1]:].tolist()
                new = new[: new.index(tok.eos_token_id)] if tok.eos_token_id in new else new
                answer = split_output(prefix + tok.decode(new, skip_special_tokens=True), taxonomy).answer
                lang = json.loads(r["markers"]).get("language")
                words.append(word_count(answer, lang))
                hits += reannotate(answer, "length_bucket", lang, taxonomy) == value
        out[value] = {"mean_words": round(sum(words) / len(words), 1), "in_bucket": round(hits / len(words), 3),
                      "over_limit": round(sum(w > limit for w in words) / len(words), 3), "words": words}
    tok.padding_side = "right"
    return out


def main() -> None:
    import contextlib

    import pyarrow.parquet as pq
    import torch

    from treasure.config import load_config
    from treasure.packaged import load_smollm2_model, load_smollm2_tokenizer
    from treasure.taxonomy import load_taxonomy
    from treasure.train.completion_loss import CompletionLM
    from treasure.train.config import TrainConfig
    from treasure.train.data_step import batch_order, collate, format_epoch, load_examples
    from treasure.train.loop import lr_multiplier
    from treasure.train.model_build import resolve_precision

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--annotated", default="runs/demo/annotated")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--probe-at", default="70,150")
    ap.add_argument("--prompts", type=int, default=24)
    ap.add_argument("--max-chars", type=int, default=400)
    ap.add_argument("--max-tokens", type=int, default=192)
    ap.add_argument("overrides", nargs="*", help="train-section key=value overrides")
    args = ap.parse_args()
    cfg = load_config(TrainConfig, ROOT / "pipelines/configs/demo.yaml", [f"max_steps={args.steps}", *args.overrides], section="train")
    if cfg.model.kind != "smollm2":
        raise SystemExit("this probe fine-tunes the packaged SmolLM2 (train.model.kind=smollm2)")
    taxonomy = load_taxonomy(cfg.taxonomy)
    torch.set_num_threads(cfg.cpus_per_worker)
    torch.manual_seed(cfg.seed)
    rows = [r for f in sorted(Path(args.annotated, "data").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    prompts, limit = held_out_probe(rows, cfg, taxonomy, args.prompts, args.max_chars)
    from treasure.heldout import is_heldout

    examples = load_examples([r for r in rows if not is_heldout(r["id"], cfg.heldout_seed, cfg.heldout_fraction)], taxonomy)
    tok = load_smollm2_tokenizer()
    tok.pad_token = tok.pad_token or tok.eos_token
    lm = load_smollm2_model(dtype=torch.float32)
    model = CompletionLM(lm).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_multiplier(
        s, warmup_steps=cfg.warmup_steps, max_steps=cfg.max_steps, min_lr_ratio=cfg.min_lr_ratio))
    bf16 = resolve_precision(cfg.precision, use_gpu=False) == "bf16"
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    probe_at = {int(s) for s in args.probe_at.split(",")}
    step, epoch, trained = 0, 0, 0.0
    while step < cfg.max_steps:
        data = format_epoch(examples, tok, taxonomy, markers=cfg.markers, dropout=cfg.dropout, seed=cfg.seed, epoch=epoch,
                            max_length=cfg.max_length, max_prompt_length=cfg.max_prompt_length)
        for batch_ids in batch_order([len(x) for x in data.input_ids], cfg.batch_size, seed=cfg.seed, epoch=epoch):
            t0 = time.perf_counter()
            with autocast():
                loss = model(**collate(batch_ids, data, pad_id=tok.pad_token_id))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step(), sched.step(), opt.zero_grad(set_to_none=True)
            step, trained = step + 1, trained + time.perf_counter() - t0
            if step in probe_at:
                model.eval()
                result = probe(lm, tok, taxonomy, prompts, limit, args.max_tokens, autocast)
                model.train()
                print(json.dumps({"step": step, "train_seconds": round(trained, 1), "loss": round(loss.item(), 3),
                                  "limit": limit, "prompts": len(prompts), "values": result}), flush=True)
            if step >= cfg.max_steps:
                break
        epoch += 1


if __name__ == "__main__":
    main()
