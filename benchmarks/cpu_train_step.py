"""The CPU training step of the embedded default, before and after: tokens/s side by side in one run.

Run:  .venv/bin/python benchmarks/cpu_train_step.py [--annotated runs/demo/annotated] [--steps 8] [--repeats 3]
      [--batch 8] [--max-length 256] [--arms fp32_full,fp32_completion,bf16_full,bf16_completion]

One process, no Ray: the packaged SmolLM2-135M-Instruct, full fine-tuning with AdamW, on the same
batches for every arm: real demo rows (the annotated dataset, markers rendered with the demo's
dropout, exactly the train stage's data step) grouped by length into batches (the loop's
`batch_order`). Arms, each in a fresh copy of the weights, run in alternating order over
`--repeats` repeats (so a machine that slows down hurts all arms alike):

  fp32_full         the loop as it was: float32, logits over every position (transformers' loss)
  fp32_completion   float32, logits only at labelled positions (treasure.train.completion_loss)
  bf16_full         bf16 autocast, full logits
  bf16_completion   bf16 autocast, completion-only logits (the demo's setting on a CPU with avx512_bf16)

Throughput = non-pad tokens / wall seconds of steps after the first (warm-up) step. Prints one JSON
object: per-arm tokens/s per repeat, medians, each arm's ratio to fp32_full, and the machine facts.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform as host
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "platform"))
ARMS = ("fp32_full", "fp32_completion", "bf16_full", "bf16_completion")


def demo_batches(annotated: str, batch: int, max_length: int, steps: int, tokenizer):
    """`steps` collated batches of real demo rows, formatted as the marked model's train stage does."""
    import pyarrow.parquet as pq

    from treasure.config import load_config
    from treasure.taxonomy import load_taxonomy
    from treasure.train.config import TrainConfig
    from treasure.train.data_step import batch_order, collate, format_epoch, load_examples

    cfg = load_config(TrainConfig, ROOT / "pipelines/configs/demo.yaml", section="train")
    taxonomy = load_taxonomy(ROOT / cfg.taxonomy if not Path(cfg.taxonomy).is_absolute() else cfg.taxonomy)
    rows = [r for f in sorted(Path(annotated, "data").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    examples = load_examples(rows, taxonomy)
    data = format_epoch(examples, tokenizer, taxonomy, markers=True, dropout=cfg.dropout, seed=0, epoch=0,
                        max_length=max_length)
    order = batch_order([len(x) for x in data.input_ids], batch, seed=0, epoch=0)[:steps]
    return [collate(b, data, pad_id=tokenizer.pad_token_id) for b in order]


def run_arm(arm: str, base_model, batches) -> float:
    import torch

    from treasure.train.completion_loss import CompletionLM

    lm = copy.deepcopy(base_model).train()
    model = CompletionLM(lm) if arm.endswith("completion") else lm
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if arm.startswith("bf16") else contextlib.nullcontext
    tokens, start = 0, None
    for i, batch in enumerate(batches):
        if i == 1:
            start = time.perf_counter()  # step 0 is warm-up (allocator, kernels)
        with autocast():
            out = model(**batch)
        loss = out if arm.endswith("completion") else out.loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= 1:
            tokens += int(batch["attention_mask"].sum())
    return tokens / (time.perf_counter() - start)


def main() -> None:
    import torch

    from treasure.packaged import load_smollm2_model, load_smollm2_tokenizer
    from treasure.train.model_build import cpu_has_bf16

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--annotated", default="runs/demo/annotated")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--arms", default=",".join(ARMS))
    args = ap.parse_args()
    arms = args.arms.split(",")
    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    tok = load_smollm2_tokenizer()
    batches = demo_batches(args.annotated, args.batch, args.max_length, args.steps + 1, tok)
    base = load_smollm2_model(dtype=torch.float32)
    results: dict[str, list[float]] = {a: [] for a in arms}
    for r in range(args.repeats):
        for arm in (arms if r % 2 == 0 else arms[::-1]):
            results[arm].append(round(run_arm(arm, base, batches), 1))
            print(f"repeat {r} {arm}: {results[arm][-1]} tok/s", file=sys.stderr, flush=True)
    medians = {a: statistics.median(v) for a, v in results.items()}
    ref = medians.get("fp32_full")
    print(json.dumps({
        "model": "SmolLM2-135M-Instruct (packaged), full fine-tuning, AdamW",
        "batches": f"{args.steps} timed steps (+1 warm-up) of {args.batch} demo rows, max_length {args.max_length}, length-grouped",
        "mean_tokens_per_batch": round(sum(int(b["attention_mask"].sum()) for b in batches) / len(batches), 1),
        "tokens_per_second": results, "median": medians,
        "ratio_to_fp32_full": {a: round(m / ref, 2) for a, m in medians.items()} if ref else None,
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "cpu_has_bf16": cpu_has_bf16(),
                    "torch": torch.__version__, "python": host.python_version()},
    }, indent=2))


if __name__ == "__main__":
    main()
