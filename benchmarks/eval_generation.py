"""Evaluation generation: the transformers actor path vs vLLM through `ray.data.llm`, same prompts and settings.

Run:  .venv/bin/python benchmarks/eval_generation.py [--checkpoint DIR] [--prompts 96] [--max-tokens 192]
      [--repeats 2] [--arms transformers,vllm] [--batch 32] [--vllm-batch N]

Both arms call the evaluate stage's own `treasure.evaluate.generation.generate_rows` on one local Ray
cluster (2 CPUs), with the settings of `pipelines/configs/demo.yaml`'s evaluate.generation: one actor
holding 2 CPUs, greedy, `--max-tokens` new tokens. Batches: the transformers arm 32 (the demo's
transformers path, `--batch`), the vllm arm the demo config's `batch_size` (vLLM's max_num_seqs;
`--vllm-batch`). transformers runs float32 (as the
demo did before vLLM); vllm runs bfloat16 where the CPU has native bf16 (auto_dtype), as the demo
does now. Prompts are the first `--prompts` Self-Instruct user instructions (bundled,
data/), half of them with a requested `length_bucket` rendered by `render_request` as the
evaluation renders it. The checkpoint default is the packaged SmolLM2-135M-Instruct in the checkpoint
layout (an untrained base model; pass a trained one with --checkpoint). Arms alternate per repeat
(order reversed on every other repeat); each timing includes the arm's engine start, as a stage
run pays it. Prints JSON: wall seconds, generated tokens, tokens/s per arm and repeat, and the
median speed-up in wall time and in tokens/s (the two engines, float32 vs bfloat16, do not write
identical texts, so tokens/s is the fairer ratio; both are printed).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "platform")]
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

DATA = REPO / "data" / "self-instruct" / "user_oriented_instructions.jsonl"


def checkpoint_dir(arg: str | None, root: Path) -> Path:
    """`--checkpoint` as is, or the packaged SmolLM2 laid out as an untrained checkpoint."""
    if arg:
        return Path(arg)
    from treasure.models.packaged import smollm2_hf_dir
    from treasure.taxonomy import load_taxonomy

    out = root / "smollm2"
    out.mkdir()
    for f in smollm2_hf_dir().iterdir():
        (out / f.name).symlink_to(f)
    taxonomy = load_taxonomy(str(REPO / "pipelines" / "configs" / "taxonomy_demo.yaml"))
    (out / "taxonomy.yaml").write_text(taxonomy.to_yaml())
    (out / "treasure.json").write_text(json.dumps({"markers": False, "taxonomy_version": taxonomy.version}))
    return out


def demo_generation_batch() -> int:
    """evaluate.generation.batch_size of pipelines/configs/demo.yaml."""
    import yaml

    return int(yaml.safe_load((REPO / "pipelines" / "configs" / "demo.yaml").read_text())["evaluate"]["generation"]["batch_size"])


def requests(n: int, taxonomy) -> list[dict]:
    from treasure.template import render_request

    lines = DATA.read_text().splitlines()
    rows = []
    for i, line in enumerate(lines[:n]):
        rec = json.loads(line)
        text = rec["instruction"] + ("\n\n" + rec["instances"][0]["input"] if rec["instances"][0].get("input") else "")
        wanted = {"length_bucket": ["concise", "medium", "long"][i % 3]} if i % 2 else {}
        turn, prefix = render_request(text[:400], wanted, taxonomy)
        rows.append({"request_id": str(i), "model": "m", "user_turn": turn, "prefix": prefix})
    return rows


def run_arm(arm: str, folder: Path, rows: list[dict], max_tokens: int, taxonomy, batch: int) -> dict:
    from treasure.models.engine import EngineConfig, SamplingParams, auto_dtype
    from treasure.evaluate.generation import generate_rows
    from treasure.resources import Pool

    engine = EngineConfig(model=str(folder), backend=arm, batch_size=batch, dtype=auto_dtype(arm))
    t0 = time.perf_counter()
    out = generate_rows(rows, {"m": engine}, {"m": False}, SamplingParams(max_tokens=max_tokens), taxonomy,
                        pool=Pool(num_cpus=2.0), batch_size=batch)
    wall = time.perf_counter() - t0
    tokens = sum(int(r["completion_tokens"]) for r in out)
    return {"arm": arm, "dtype": engine.dtype, "batch": batch, "wall_s": round(wall, 1), "tokens": tokens,
            "tokens_per_s": round(tokens / wall, 1), "rows": len(out),
            "length_finishes": sum(r["finish_reason"] == "length" for r in out)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint")
    ap.add_argument("--prompts", type=int, default=96)
    ap.add_argument("--max-tokens", type=int, default=192)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--arms", default="transformers,vllm")
    ap.add_argument("--batch", type=int, default=32, help="the transformers arm's batch (the demo's before vLLM: 32)")
    ap.add_argument("--vllm-batch", type=int, default=None,
                    help="the vllm arm's batch = max_num_seqs (default: the demo config's evaluate.generation.batch_size)")
    args = ap.parse_args()
    vllm_batch = args.vllm_batch or demo_generation_batch()

    import ray

    from treasure.taxonomy import load_taxonomy

    arms = args.arms.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        folder = checkpoint_dir(args.checkpoint, Path(tmp))
        taxonomy = load_taxonomy(str(folder / "taxonomy.yaml"))
        rows = requests(args.prompts, taxonomy)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        results = []
        for rep in range(args.repeats):
            for arm in (arms if rep % 2 == 0 else arms[::-1]):
                r = run_arm(arm, folder, rows, args.max_tokens, taxonomy, vllm_batch if arm == "vllm" else args.batch)
                print(json.dumps({"repeat": rep, **r}), flush=True)
                results.append({"repeat": rep, **r})
        ray.shutdown()

    def med(arm, key):
        return statistics.median(r[key] for r in results if r["arm"] == arm)

    report = {"prompts": args.prompts, "max_tokens": args.max_tokens, "repeats": args.repeats, "results": results}
    if set(arms) >= {"transformers", "vllm"}:
        report["speedup_wall"] = round(med("transformers", "wall_s") / med("vllm", "wall_s"), 2)
        report["speedup_tokens_per_s"] = round(med("vllm", "tokens_per_s") / med("transformers", "tokens_per_s"), 2)
        report["speedup_spread_tokens_per_s"] = sorted(
            round(v["tokens_per_s"] / t["tokens_per_s"], 2)
            for t, v in zip([r for r in results if r["arm"] == "transformers"], [r for r in results if r["arm"] == "vllm"]))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
