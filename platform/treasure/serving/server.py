"""ModelServer: the request logic of the HTTP server, without Ray or HTTP.

Loads the model and its taxonomy from a checkpoint (folder, s3:// or `models:/name/version`),
turns validated requests into engine calls and engine output into API responses. The Ray Serve
shell (`serving/app.py`) only adds routing, batching, streaming transport and health plumbing.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from treasure.serving.api_models import ChatCompletionRequest, GenerateRequest, SamplingFields
from treasure.serving.config import ServeConfig
from treasure.serving.limits import LimitError, check_prompt_tokens, resolve_max_tokens
from treasure.serving.prompting import (
    BlockStripper, allowed_values, finish_output, request_for_chat, request_for_prompt, split_inferred,
    validate_requested,
)
from treasure.taxonomy import Taxonomy, load_taxonomy


def find_checkpoint_root(folder: Path) -> Path:
    """The folder holding taxonomy.yaml (the folder itself or one level below, as MLflow may nest it)."""
    if (folder / "taxonomy.yaml").exists():
        return folder
    found = sorted(p.parent for p in folder.glob("*/taxonomy.yaml"))
    if len(found) == 1:
        return found[0]
    raise FileNotFoundError(f"{folder}: no taxonomy.yaml (expected the checkpoint layout of docs/data-formats.md)")


def resolve_checkpoint(uri: str, download_dir: str | None = None) -> Path:
    """A validated local checkpoint folder for a path, an s3:// URI or an MLflow `models:/name/version` URI.

    Folders and URIs go through the training stage's `treasure.checkpoint.read_checkpoint`
    (download, checksum validation, fallback to an older intact checkpoint).
    """
    from treasure.checkpoint import read_checkpoint

    if uri.startswith("models:/"):
        import mlflow.artifacts

        local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=download_dir)
        return Path(read_checkpoint(str(find_checkpoint_root(Path(local)))).local_dir)
    if "://" not in uri and not Path(uri).is_dir():
        raise FileNotFoundError(f"checkpoint {uri!r} is not a folder, an s3:// URI or an MLflow models:/name/version URI")
    return Path(read_checkpoint(uri).local_dir)


@dataclass
class Prepared:
    """A validated request, ready for the engine."""

    user_turn: str
    prefix: str  # the start of the model's own block (requested markers prefilled), or ''
    requested: dict[str, str]
    params: Any  # treasure.engine.SamplingParams
    prompt_tokens: int


@dataclass
class EngineHealth:
    error: str | None = None
    since: float | None = None
    probes: int = 0
    batches: int = 0  # engine.generate calls made for batches (one per sampling-params group)
    batched_requests: int = 0  # requests those calls carried: batched_requests / batches = mean batch size


class ModelServer:
    """Everything between a parsed request and a response body, for one loaded model."""

    def __init__(self, config: ServeConfig, engine: Any = None):
        from treasure.engine import EngineConfig, load_engine

        self.config = config
        self.folder = resolve_checkpoint(config.checkpoint)
        self.taxonomy: Taxonomy = load_taxonomy(self.folder / "taxonomy.yaml")
        meta_path = self.folder / "treasure.json"
        self.meta: dict[str, Any] = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        self.model_name = config.model_name or _default_name(config.checkpoint)
        self.engine = engine or load_engine(EngineConfig(
            model=str(self.folder), backend=config.engine, device=config.device,
            **({"dtype": config.dtype} if config.dtype else {}), batch_size=config.max_batch_size,
            num_threads=config.num_threads,
        ))
        self.health = EngineHealth()

    # --- requests -> engine input -------------------------------------------------------------
    def _params(self, req: SamplingFields, max_tokens: int | None):
        from treasure.engine import SamplingParams

        n = resolve_max_tokens(max_tokens, self.config.default_max_tokens, self.config.max_tokens_limit)
        return SamplingParams(max_tokens=n, temperature=req.temperature, top_p=req.top_p, seed=req.seed or 0)

    def _prepare(self, turn: tuple[str, str], requested: dict[str, str], params) -> Prepared:
        from treasure.engine import prompt_token_ids

        n = len(prompt_token_ids(self.engine.tokenizer, *turn))
        check_prompt_tokens(n, self.config.max_prompt_tokens)
        return Prepared(turn[0], turn[1], requested, params, n)

    def prepare_generate(self, req: GenerateRequest) -> Prepared:
        """Validate markers (MarkerError), bound tokens (LimitError), build the user turn."""
        requested = validate_requested(req.markers, self.taxonomy)
        params = self._params(req, req.max_tokens)
        return self._prepare(request_for_prompt(req.prompt, requested, self.taxonomy, self.config.prefill), requested, params)

    def prepare_chat(self, req: ChatCompletionRequest) -> Prepared:
        requested = validate_requested(req.markers, self.taxonomy)
        params = self._params(req, req.max_completion_tokens or req.max_tokens)
        return self._prepare(request_for_chat(req.messages, requested, self.taxonomy, self.config.prefill), requested, params)

    # --- engine calls ---------------------------------------------------------------------------
    def generate_batch(self, items: list[Prepared]) -> list[Any]:
        """One engine.generate per distinct SamplingParams in the batch; results in input order."""
        groups: dict[str, list[int]] = {}
        for i, p in enumerate(items):
            groups.setdefault(p.params.model_dump_json(), []).append(i)
        out: list[Any] = [None] * len(items)
        try:
            for idx in groups.values():
                gens = self.engine.generate([items[i].user_turn for i in idx], items[idx[0]].params,
                                            [items[i].prefix for i in idx])
                self.health.batches += 1
                self.health.batched_requests += len(idx)
                for i, g in zip(idx, gens):
                    out[i] = g
        except Exception as e:  # an engine failure, not a request problem: the health check will probe
            self.health.error, self.health.since = f"{type(e).__name__}: {e}", time.time()
            raise
        return out

    def response_for(self, prepared: Prepared, gen: Any) -> dict[str, Any]:
        """The /v1/generate body for one Generation."""
        if gen.finish_reason == "prompt_too_long":
            raise LimitError(400, f"prompt ({gen.prompt_tokens} tokens) does not fit the model's context", param="prompt")
        done = finish_output(gen.text, self.taxonomy)
        return {
            "text": done.answer,
            "markers": {"requested": prepared.requested, "inferred": split_inferred(done.markers, prepared.requested)},
            "finish_reason": gen.finish_reason,
            "usage": _usage(gen.prompt_tokens, gen.completion_tokens),
            "model": self.model_name,
        }

    def chat_response_for(self, prepared: Prepared, gen: Any) -> dict[str, Any]:
        """An OpenAI `chat.completion` object (plus top-level `markers`)."""
        body = self.response_for(prepared, gen)
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": self.model_name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": body["text"]},
                         "finish_reason": body["finish_reason"] if body["finish_reason"] in ("stop", "length") else "stop"}],
            "usage": body["usage"], "markers": body["markers"],
        }

    def stream(self, prepared: Prepared) -> Iterator[tuple[str, dict[str, Any] | None]]:
        """(answer delta, None) while generating, then ('', summary) with markers and usage last."""
        stripper = BlockStripper(self.taxonomy)
        try:
            for delta in self.engine.stream(prepared.user_turn, prepared.params, prepared.prefix):
                out = stripper.feed(delta)
                if out:
                    yield out, None
        except Exception as e:
            self.health.error, self.health.since = f"{type(e).__name__}: {e}", time.time()
            raise
        last, done = stripper.finish()
        # The stream gives text, not token ids: re-tokenize what the model wrote after the prefix
        # (can differ by a token or two; capped).
        written = stripper.raw[len(prepared.prefix):]
        completion = min(len(self.engine.tokenizer(written, add_special_tokens=False)["input_ids"]),
                         prepared.params.max_tokens)
        finish = "length" if completion >= prepared.params.max_tokens else "stop"
        if last:
            yield last, None
        yield "", {
            "markers": {"requested": prepared.requested, "inferred": split_inferred(done.markers, prepared.requested)},
            "usage": _usage(prepared.prompt_tokens, completion), "finish_reason": finish,
        }

    # --- metadata and health ------------------------------------------------------------------
    def taxonomy_body(self) -> dict[str, Any]:
        # Only the block's categories: they are what a caller may fix and what the model writes
        # (a taxonomy's `block:` may leave annotation-only categories out of it).
        allowed = allowed_values(self.taxonomy)
        return {
            "name": self.taxonomy.name, "version": self.taxonomy.version, "tag": self.taxonomy.tag,
            "categories": [{"name": c.name, "kind": c.kind, "description": c.description, "allowed": allowed[c.name]}
                           for c in map(self.taxonomy.category, self.taxonomy.block_names)],
            "model": self.model_name, "markers_trained": bool(self.meta.get("markers", False)),
        }

    def stats(self) -> dict[str, Any]:
        import torch  # every engine runs on torch; its intra-op threads bound CPU throughput

        h = self.health
        return {"batches": h.batches, "batched_requests": h.batched_requests,
                "mean_batch_size": round(h.batched_requests / h.batches, 2) if h.batches else None,
                "engine_error": h.error, "health_probes": h.probes, "torch_threads": torch.get_num_threads()}

    def check_health(self) -> None:
        """Raise when the engine is broken. A recorded engine failure triggers a tiny probe generation;
        a probe that succeeds clears it (the failure was transient), one that fails keeps the replica unhealthy."""
        if self.health.error is None:
            return
        from treasure.engine import SamplingParams

        self.health.probes += 1
        try:
            self.engine.generate(["ping"], SamplingParams(max_tokens=self.config.health_probe_tokens))
        except Exception as e:
            raise RuntimeError(f"engine is broken: {type(e).__name__}: {e} (first failure: {self.health.error})") from e
        self.health.error = self.health.since = None


def _default_name(checkpoint: str) -> str:
    """`models:/name/3` → 'name/3'; a folder or URI → its last path part."""
    if checkpoint.startswith("models:/"):
        return checkpoint[len("models:/"):].strip("/")
    return Path(checkpoint.rstrip("/")).name


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
