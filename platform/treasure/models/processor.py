"""What the two `ray.data.llm` vLLM processor clients (evaluation generation, the LLM tagger) share."""

from __future__ import annotations

import os


def reshape_map_kwargs() -> dict:
    """`Dataset.map` options of a processor's preprocess / postprocess steps, which only reshape dicts.

    No CPU is reserved for them, so they never wait behind engine actors that hold every CPU of a
    small machine (a deadlock on 2 cores). At most two run at once: zero-CPU tasks are otherwise
    unbounded, and Ray starts a worker process per concurrent task (measured: 56 workers and a load
    average of 12 on a 2-core machine for 64 one-row blocks, while the engine was starting).
    """
    import ray

    return {"num_cpus": 0, "compute": ray.data.TaskPoolStrategy(size=2)}


def cpu_engine_env(gpu: bool = False) -> dict:
    """The engine actors' runtime env (nothing secret): `treasure.models.engine.cpu_vllm_env` on CPU.

    VLLM_CPU_NUM_OF_RESERVED_CPU=0: by default vLLM keeps one core of its node for the frontend
    process and binds its compute threads to the rest, which on a 2-core machine halves a batch
    engine (measured, raw vLLM, SmolLM2-135M bf16, 64 prompts: 212 tok/s bound to one core, 341 tok/s
    bound to both); a batch processor's frontend only feeds token ids. Any of them can be set in the
    environment instead. On GPU pools only the CPU KV-cache size is passed (vLLM ignores it there).
    """
    from treasure.models.engine import cpu_vllm_env

    env = {"VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2")}
    if not gpu:
        env |= cpu_vllm_env() | {"VLLM_CPU_NUM_OF_RESERVED_CPU": os.environ.get("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")}
    return {"env_vars": env}


# vLLM's per-step token budget of its offline `LLM` class (vllm.engine.arg_utils.EngineArgs.get_batch_defaults,
# UsageContext.LLM_CLASS): 4096 on CPU; on GPUs 8192, the value vLLM itself uses when the device is not known
# where the arguments are built (16384 on H100/H200-class GPUs: set it).
OFFLINE_BATCHED_TOKENS = {"cpu": 4096, "gpu": 8192}


def batch_engine_kwargs(gpu: bool, max_num_batched_tokens: int | None = None) -> dict:
    """Engine arguments of a `ray.data.llm` batch engine: vLLM's offline per-step token budget.

    `max_num_batched_tokens` is how many tokens (prompt chunks and decodes together) one engine step
    schedules. vLLM sets it by usage context: its offline `LLM` class gets 4096 on CPU, 8192-16384 on
    GPUs. `ray.data.llm` builds its engine from `AsyncEngineArgs` without a usage context, and vLLM
    then falls back to its generic 2048, a budget for latency-bound online serving. A batch job is
    offline work, so it gets the offline budget unless the config sets one.

    >>> batch_engine_kwargs(gpu=False), batch_engine_kwargs(gpu=True), batch_engine_kwargs(False, 16384)
    ({'max_num_batched_tokens': 4096}, {'max_num_batched_tokens': 8192}, {'max_num_batched_tokens': 16384})
    """
    return {"max_num_batched_tokens": max_num_batched_tokens or OFFLINE_BATCHED_TOKENS["gpu" if gpu else "cpu"]}
