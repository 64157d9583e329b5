"""The LLM tagger through `ray.data.llm` vs raw vLLM on the same requests: requests/s, side by side.

Run:  .venv/bin/python benchmarks/tagger_vllm.py [--rows 200] [--categories domain,task] [--repeats 2]

Requests: the first `--rows` bundled prompts (data/: the 252 Self-Instruct instructions, then the 750
Arena-Hard questions, then alpaca-zh), one request per row and category, built by the annotate stage's own `treasure.annotate.llm_processor.tag_requests` (the
tagger prompt with few-shot examples, chat-templated and tokenized; score mode: a
structured-output choice over the category's labels), with the packaged SmolLM2-135M-Instruct.

Arms, alternating per repeat (order reversed every other repeat), each in a fresh subprocess so
neither inherits the other's warm caches:
  ray_data_llm  `treasure.annotate.llm_processor.answers_by_row`: Ray Data's vLLM engine processor,
                one engine actor holding both CPUs of a local 2-CPU Ray cluster, batches of 64
  raw_vllm      `vllm.LLM.generate` on the same token ids and sampling parameters in one process
                (vLLM's defaults: its engine core and model worker in processes of their own)
  raw_vllm_inproc  the same with VLLM_ENABLE_V1_MULTIPROCESSING=0 (engine core in this process: no
                process spawned; the processor's engine actors set it too, where it keeps the engine
                core apart but runs the model inside it, treasure.models.engine.cpu_vllm_env)
Both: bf16 where the CPU has it, eager mode, prefix caching on, max_num_seqs 64, vLLM's offline per-step
token budget (raw: the `LLM` class's own default, 4096 on CPU; the processor: the tagger's
`max_num_batched_tokens`, by default the same offline budget, which `ray.data.llm` alone would leave at
2048: `--batched-tokens 2048` measures that), no engine stats
logging (vLLM's offline default; the processor turns it off too). The requests are built once and
handed to every arm as a file, so no arm has torch or transformers imported before its clock starts.
Each arm is timed from its first use of vLLM to the last answer: raw_vllm from `import vllm` (which
imports torch; its process has not imported either before), ray_data_llm from building the processor on a running Ray cluster (its engine
actor imports vLLM on the clock). Both pay one engine start, ~30-50 s here, so use enough rows that
it does not dominate; raw_vllm also reports `generate` alone. Prints JSON and the median
ratio ray_data_llm / raw_vllm in requests/s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "platform")]
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
# Both arms bind vLLM to every core, as the processor does (treasure.models.processor.cpu_engine_env).
os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
DATA = REPO / "data" / "self-instruct" / "user_oriented_instructions.jsonl"


def annotate_config(categories: list[str], batched_tokens: int | None = None):
    from treasure.annotate.config import AnnotateConfig

    return AnnotateConfig.model_validate({
        "input": "unused", "output": "unused", "taxonomy": "paper",
        "tagger": {"engine": "vllm", "mode": "score", "calibration": "none", "score_norm": "sum",
                   "categories": categories, "batch_size": 64, "pool": {"count": 1, "num_cpus": 2.0},
                   "max_num_batched_tokens": batched_tokens}})


def bundled_prompts(n: int) -> list[tuple[str, str, str]]:
    """The first `n` of: the 252 Self-Instruct instructions, then the 750 Arena-Hard questions, then alpaca-zh."""
    out = []
    for i, line in enumerate(DATA.read_text().splitlines()):
        rec = json.loads(line)
        out.append((f"si:{i}", rec["instruction"], rec["instances"][0]["output"]))
    # Lines are split on "\n" only: str.splitlines also splits at the U+2028 some prompts hold.
    for line in (REPO / "data" / "arena-hard-v2.0" / "question.jsonl").read_text(encoding="utf-8").split("\n"):
        if not line.strip():
            continue
        if len(out) >= n:
            break
        rec = json.loads(line)
        out.append((f"ah:{rec['uid']}", rec["prompt"], ""))
    if len(out) < n:
        for i, rec in enumerate(json.loads((REPO / "data" / "alpaca-zh" / "alpaca_zh_10000.json").read_text())):
            if len(out) >= n:
                break
            out.append((f"zh:{i}", rec["instruction"] + ("\n" + rec["input"] if rec["input"] else ""), rec["output"]))
    return out[:n]


def build_requests(n: int, categories: list[str]) -> list[dict]:
    from treasure.annotate.llm_processor import tag_requests
    from treasure.models.causal_lm import model_folder

    cfg = annotate_config(categories)
    rows = [{"id": pid, "prompt": prompt, "response": response, "_to_tag": json.dumps(categories), "_error": None}
            for pid, prompt, response in bundled_prompts(n)]
    folder = model_folder(cfg.tagger.model)
    return [r for row in rows for r in tag_requests(row, config_json=cfg.model_dump_json(), folder=folder)]


def arm_ray_data_llm(requests: list[dict], categories: list[str], batched_tokens: int | None = None) -> dict:
    import ray

    from treasure.annotate.llm_processor import answers_by_row

    cfg = annotate_config(categories, batched_tokens)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    t0 = time.perf_counter()
    # Engine-batch-sized blocks, as the stage's shard-sized ones are at least (from_items would make ~200).
    got = answers_by_row(cfg, ray.data.from_items(requests, override_num_blocks=max(1, -(-len(requests) // cfg.tagger.batch_size))))
    t1 = time.perf_counter()
    ray.shutdown()
    n = sum(len(v) for v in got.values())
    return {"answers": n, "seconds_with_start": round(t1 - t0, 1), "requests_per_s": round(n / (t1 - t0), 2)}


def arm_raw_vllm(requests: list[dict], categories: list[str]) -> dict:
    # The clock starts before vLLM and torch are imported: the other arm's engine actor imports them on its clock too.
    assert not {"vllm", "torch"} & set(sys.modules), "the raw arm must import vLLM and torch on its clock"
    t0 = time.perf_counter()
    from vllm import LLM, SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    from treasure.models.causal_lm import model_folder
    from treasure.models.engine import auto_dtype

    imported = time.perf_counter()
    llm = LLM(model=model_folder(annotate_config(categories).tagger.model), dtype=auto_dtype("vllm"), enforce_eager=True,
              enable_prefix_caching=True, max_num_seqs=64, max_model_len=4096)
    params = []
    for r in requests:
        sp = json.loads(r["sampling"])
        choice = sp.pop("structured_outputs", None)
        params.append(SamplingParams(**sp, structured_outputs=StructuredOutputsParams(**choice) if choice else None))
    started = time.perf_counter()
    outs = llm.generate([{"prompt_token_ids": r["ids"]} for r in requests], params, use_tqdm=False)
    t1 = time.perf_counter()
    return {"answers": len(outs), "seconds_with_start": round(t1 - t0, 1), "requests_per_s": round(len(outs) / (t1 - t0), 2),
            "generate_only_s": round(t1 - started, 1), "import_s": round(imported - t0, 1)}


def child(arm: str, requests_file: str, categories: list[str], batched_tokens: int | None = None) -> None:
    if arm == "raw_vllm_inproc":  # vLLM's offline engine with its engine core in this process (no spawn)
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    # Read, not built here: building them imports torch and transformers, which the raw arm would then
    # have warm before its clock starts while the processor's engine actor imports them on its clock.
    requests = json.loads(Path(requests_file).read_text())
    result = arm_ray_data_llm(requests, categories, batched_tokens) if arm == "ray_data_llm" else arm_raw_vllm(requests, categories)
    print("RESULT " + json.dumps({"arm": arm, "requests": len(requests), **result}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=200)
    ap.add_argument("--categories", default="domain,task")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--arms", default="ray_data_llm,raw_vllm", help="of ray_data_llm, raw_vllm, raw_vllm_inproc")
    ap.add_argument("--batched-tokens", type=int, default=None, help="ray_data_llm: the engine's max_num_batched_tokens "
                    "(default: the tagger's, vLLM's offline budget; 2048 is what ray.data.llm gives vLLM by itself)")
    ap.add_argument("--arm", help=argparse.SUPPRESS)
    ap.add_argument("--requests-file", help=argparse.SUPPRESS)
    args = ap.parse_args()
    cats = args.categories.split(",")
    if args.arm:
        child(args.arm, args.requests_file, cats, args.batched_tokens)
        return
    arms, results = args.arms.split(","), []
    # The requests are built once, in this process, and read by every arm from a file.
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(build_requests(args.rows, cats), f)
    for rep in range(args.repeats):
        for arm in (arms if rep % 2 == 0 else arms[::-1]):
            out = subprocess.run([sys.executable, __file__, "--arm", arm, "--requests-file", f.name, "--categories",
                                  args.categories, *(["--batched-tokens", str(args.batched_tokens)] if args.batched_tokens else [])],
                                 capture_output=True, text=True, timeout=1800)
            line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                raise RuntimeError(f"{arm} failed:\n{out.stderr[-3000:]}")
            results.append({"repeat": rep, **json.loads(line[len("RESULT "):])})
            print(json.dumps(results[-1]), flush=True)
    os.unlink(f.name)
    report = {"rows": args.rows, "categories": cats, "results": results}
    for raw in ("raw_vllm", "raw_vllm_inproc"):
        ratios = [a["requests_per_s"] / b["requests_per_s"]
                  for a, b in zip([r for r in results if r["arm"] == "ray_data_llm"], [r for r in results if r["arm"] == raw])]
        if ratios:
            report[f"ratio_ray_data_llm_over_{raw}"] = round(statistics.median(ratios), 3)
            report[f"ratios_over_{raw}"] = [round(x, 3) for x in ratios]
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
