"""The one-GPU recipe (pipelines/configs/single_gpu.yaml) on one GPU: LoRA bf16 training tokens/s and MFU,
then vLLM generation tokens/s, for Qwen2.5-0.5B-Instruct's architecture.

Run:  python benchmarks/gpu_single_gpu_recipe.py [--model FOLDER] [--steps 20] [--batch 16] [--seq 1024]
      python benchmarks/gpu_single_gpu_recipe.py --smoke     # CPU, tiny sizes: checks the code path only
Self-contained (torch, transformers, peft, vLLM; no network, no Ray). Without --model the weights are
random in Qwen2.5-0.5B's published architecture (the device machines reach no Hub), which costs the
same FLOPs as the real weights; data are random token ids (throughput only). Training is the recipe's:
LoRA r=16 on every projection, bf16 autocast, AdamW on the adapters. MFU is printed two ways: the
usual 6·N·tokens/s, and 4·N·tokens/s (LoRA computes no gradients for the frozen weights, so the
backward pass is about 2·N, not 4·N, per token). The peak is the H100 SXM bf16 dense figure
(989.4 TFLOP/s); pass --peak-flops for other cards. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

H100_BF16_DENSE_PEAK = 989.4e12
# Qwen/Qwen2.5-0.5B-Instruct's published config.json.
QWEN25_05B = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                  num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                  rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True)
SMOKE = dict(QWEN25_05B, vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2)
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def build(model: str | None, smoke: bool):
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

    if model:
        return AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32), f"weights from {model}"
    torch.manual_seed(0)
    return Qwen2ForCausalLM(Qwen2Config(**(SMOKE if smoke else QWEN25_05B))), \
        ("tiny Qwen2 (smoke run)" if smoke else "Qwen2.5-0.5B architecture, random init")


def train(lm, device: str, args) -> tuple[dict, object]:
    import torch
    from peft import LoraConfig, get_peft_model

    n_params = sum(p.numel() for p in {id(p): p for p in lm.parameters()}.values())
    model = get_peft_model(lm, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=TARGETS,
                                          task_type="CAUSAL_LM")).to(device).train()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    gen = torch.Generator(device=device).manual_seed(0)
    vocab = lm.config.vocab_size
    for step in range(args.steps + args.warmup):
        if step == args.warmup:
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        ids = torch.randint(0, vocab, (args.batch, args.seq), device=device, generator=gen)  # (B, T)
        with torch.autocast(device, dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    tps = args.steps * args.batch * args.seq / seconds
    return {"params": n_params, "trainable_lora_params": trainable, "batch": args.batch, "seq": args.seq,
            "timed_steps": args.steps, "seconds": round(seconds, 3), "tokens_per_second": round(tps, 1),
            "mfu_6N": round(6 * n_params * tps / args.peak_flops, 4),
            "mfu_4N_lora": round(4 * n_params * tps / args.peak_flops, 4), "last_loss": round(float(loss.detach()), 3),
            "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None}, model


def generate(lm, args) -> dict:
    """vLLM offline engine on the trained weights (LoRA merged, saved to a temporary folder), token-id prompts."""
    try:
        from vllm import LLM, SamplingParams, TokensPrompt
    except ImportError as e:
        return {"skipped": f"vLLM is not installed ({e})"}
    import random

    with tempfile.TemporaryDirectory(prefix="recipe-model-") as folder:
        lm.save_pretrained(folder)
        t_load = time.perf_counter()
        engine = LLM(model=folder, dtype="bfloat16", skip_tokenizer_init=True, seed=0,
                     max_model_len=args.prompt_tokens + args.new_tokens + 8, gpu_memory_utilization=0.8)
        load = time.perf_counter() - t_load
        rng = random.Random(0)
        prompts = [TokensPrompt(prompt_token_ids=[rng.randrange(100, lm.config.vocab_size - 100) for _ in range(args.prompt_tokens)])
                   for _ in range(args.gen_batch)]
        params = SamplingParams(max_tokens=args.new_tokens, ignore_eos=True, temperature=0.0, detokenize=False)
        engine.generate(prompts[:2], params)  # warm-up (graphs, caches)
        t0 = time.perf_counter()
        outs = engine.generate(prompts, params)
        seconds = time.perf_counter() - t0
    new = sum(len(o.outputs[0].token_ids) for o in outs)
    return {"engine": "vLLM offline LLM, bf16", "requests": len(prompts), "prompt_tokens": args.prompt_tokens,
            "new_tokens_each": args.new_tokens, "seconds": round(seconds, 3), "new_tokens_per_second": round(new / seconds, 1),
            "engine_load_seconds": round(load, 1)}


def main() -> None:
    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="a local HF folder (default: the architecture with random weights)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--gen-batch", type=int, default=64)
    p.add_argument("--prompt-tokens", type=int, default=256)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--peak-flops", type=float, default=H100_BF16_DENSE_PEAK)
    p.add_argument("--smoke", action="store_true", help="CPU, tiny model and sizes, no vLLM: the code path only")
    args = p.parse_args()
    if args.smoke:
        args.steps, args.warmup, args.batch, args.seq = 2, 1, 2, 32
    elif not torch.cuda.is_available():
        print(json.dumps({"error": "no CUDA device: this script measures the one-GPU recipe (use --smoke on CPU)"}))
        sys.exit(2)
    device = "cpu" if args.smoke else "cuda"
    lm, source = build(args.model, args.smoke)
    training, model = train(lm, device, args)
    result = {"recipe": "pipelines/configs/single_gpu.yaml", "model": source,
              "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu (smoke)", "training": training}
    if not args.smoke:
        result["generation"] = generate(model.merge_and_unload().cpu(), args)
    else:  # what generate() hands vLLM: merged weights in a plain HF folder that transformers reloads
        from transformers import AutoModelForCausalLM

        with tempfile.TemporaryDirectory() as folder:
            model.merge_and_unload().save_pretrained(folder)
            result["merged_folder_reloads"] = AutoModelForCausalLM.from_pretrained(folder).config.model_type
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
