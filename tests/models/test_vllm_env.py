"""The environment vLLM engines get on CPU machines: the model runs inside the engine-core process (no
third process to start), the KV cache is sized, and whatever the operator set in the environment wins."""

from __future__ import annotations

from treasure.models.engine import cpu_vllm_env
from treasure.models.processor import cpu_engine_env

VARS = ("VLLM_ENABLE_V1_MULTIPROCESSING", "VLLM_CPU_KVCACHE_SPACE", "VLLM_CPU_NUM_OF_RESERVED_CPU")


def test_cpu_defaults_and_the_environment_wins(monkeypatch):
    for k in VARS:
        monkeypatch.delenv(k, raising=False)
    assert cpu_vllm_env(3) == {"VLLM_CPU_KVCACHE_SPACE": "3", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "8")
    assert cpu_vllm_env(3) == {"VLLM_CPU_KVCACHE_SPACE": "8", "VLLM_ENABLE_V1_MULTIPROCESSING": "1"}


def test_processor_actors_get_it_on_cpu_pools_only(monkeypatch):
    for k in VARS:
        monkeypatch.delenv(k, raising=False)
    cpu = cpu_engine_env()["env_vars"]
    assert cpu == {"VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
    assert cpu_engine_env(gpu=True)["env_vars"] == {"VLLM_CPU_KVCACHE_SPACE": "2"}
