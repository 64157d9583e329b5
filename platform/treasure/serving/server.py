"""ModelServer: the request logic of the HTTP server, without Ray or HTTP.

Loads the model and its taxonomy from a checkpoint (folder, s3:// or `models:/name/version`),
turns validated requests into engine calls and engine output into API responses. The Ray Serve
shell (`treasure/serving/app.py`) only adds routing, batching, streaming transport and health plumbing.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

from treasure.models.checkpoint import META, TAXONOMY, is_registry_uri, registry_name, resolve_checkpoint
from treasure.serving.api_models import ChatCompletionRequest, CompletionRequest, GenerateRequest, SamplingFields
from treasure.serving.config import ServeConfig
from treasure.serving.limits import LimitError, check_prompt_tokens, resolve_max_tokens
from treasure.serving.prompting import (
    BlockStripper, allowed_values, request_for_chat, request_for_prompt, split_inferred,
    validate_requested,
)
from treasure.taxonomy import Taxonomy, load_taxonomy

# Serve writes the "ray.serve" logger to the replica's own log file (logs/serve/replica_*.log).
log = logging.getLogger("ray.serve")
MODEL_INPUT_LOG = "treasure model input "  # ServeConfig.log_requests: this prefix, then one JSON object


@dataclass
class Prepared:
    """A validated request, ready for the engine."""

    user_turn: Any  # the user turn (str), or a conversation ending with it (list of chat messages)
    prefix: str  # the start of the model's own block (requested markers prefilled), or ''
    requested: dict[str, str]
    params: Any  # treasure.models.engine.SamplingParams: max_tokens = answer budget + the block's own budget
    prompt_tokens: int
    answer_tokens: int = 0  # the request's max_tokens: what bounds the visible answer
    stop: tuple[str, ...] = ()  # cut the visible answer before the first one
    n: int = 1
    prompt_ids: list[int] | None = None
    logprobs: int | None = None  # None: not asked; k: each answer token's log-probability and k alternatives


class Answer:
    """Raw model text in, visible answer out: strips the marker block, cuts at stop strings and at
    the answer's own token budget (the block the model writes first does not count against it)."""

    def __init__(self, taxonomy: Taxonomy, prepared: Prepared):
        from treasure.models.engine import StopHolder

        self.stripper = BlockStripper(taxonomy)
        self.stops = StopHolder(list(prepared.stop))
        self.budget = prepared.answer_tokens
        self.answer_tokens = 0
        self.tokens = 0
        self.finish: str | None = None  # set when the answer is over before the engine says so
        self.counted = False  # whether the last fed step's tokens were the answer's (not the block's)
        self.stripper.feed(prepared.prefix)

    def feed(self, text: str, tokens: int) -> str:
        """Visible text released by `tokens` new tokens; sets `finish` when the answer must end here."""
        in_answer = self.stripper.state == "body" and self.stripper.started
        released = self.stripper.feed(text)
        out, found = self.stops.feed(released)
        self.tokens += tokens
        # The answer's tokens start with its first visible text: the step that closes a block and the
        # whitespace between the block and the answer (which the stripper drops) are the block's, as in
        # the plain path, which counts the tokens of the stripped answer. Without a block every token counts.
        self.counted = in_answer or bool(released) or self.stripper.block is False
        if self.counted:
            self.answer_tokens += tokens
        if found:
            self.finish = "stop"
        elif self.budget and self.answer_tokens >= self.budget:
            self.finish = "length"
        return out

    def end(self, engine_reason: str) -> tuple[str, str, Any]:
        """(last visible text, finish reason, FinishedOutput) once generation is over."""
        last, done = self.stripper.finish()
        if self.finish == "stop":
            last = ""
        else:
            out, found = self.stops.feed(last)
            last = out + ("" if found else self.stops.flush())
            self.finish = "stop" if found else (self.finish or engine_reason)
        if self.stripper.state == "head" and engine_reason == "length":
            self.finish = "length"  # the block used its whole budget and never closed
        return last, self.finish, done


@dataclass
class Result:
    """One finished choice: the visible answer and the markers the model chose itself."""

    text: str
    finish_reason: str  # "stop" or "length"
    inferred: dict[str, str]
    completion_tokens: int
    logprobs: list | None = None  # per answer token: (text, log-probability, alternatives), when asked


def block_token_budget(taxonomy: Taxonomy, tokenizer) -> int:
    """Tokens the model's own marker block may take, beside the answer's max_tokens: the block with
    every category at its longest allowed value, plus slack (numeric ones a 9-digit number, the largest an int marker takes)."""
    from treasure.template import render_block

    longest = {}
    for name in taxonomy.block_names:
        values = allowed_values(taxonomy).get(name)
        longest[name] = max(values, key=len) if isinstance(values, list) and values else "1" * 9
    return len(tokenizer(render_block(longest, taxonomy), add_special_tokens=False)["input_ids"]) + 8


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
        from treasure.models.engine import EngineConfig, auto_dtype, load_engine

        self.config = config
        self.folder = resolve_checkpoint(config.checkpoint)
        self.taxonomy: Taxonomy = load_taxonomy(self.folder / TAXONOMY)
        meta_path = self.folder / META
        self.meta: dict[str, Any] = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        self.model_name = config.model_name or _default_name(config.checkpoint)
        self.engine_kind = resolve_engine(config.engine) if engine is None else ("vllm" if hasattr(engine, "steps") else "transformers")
        engine_config = EngineConfig(
            model=str(self.folder), backend=self.engine_kind, device=config.device,
            dtype=config.dtype or auto_dtype(self.engine_kind, "cuda" if config.num_gpus > 0 else config.device),
            # vLLM schedules every ongoing request together (continuous batching).
            batch_size=config.max_ongoing_requests if self.engine_kind == "vllm" else config.max_batch_size,
            num_threads=config.num_threads, kv_cache_gib=config.kv_cache_gib, compile=config.compile,
        )
        if engine is None and self.engine_kind == "vllm":
            from treasure.models.vllm_async import AsyncVLLMEngine

            engine = AsyncVLLMEngine(engine_config)
        self.engine = engine or load_engine(engine_config)
        self.is_async = hasattr(self.engine, "steps")
        self.block_tokens = config.block_max_tokens or block_token_budget(self.taxonomy, self.engine.tokenizer)
        self.health = EngineHealth()
        self.created = int(time.time())

    # --- requests -> engine input -------------------------------------------------------------
    def _params(self, req: SamplingFields, max_tokens: int | None) -> tuple[Any, int]:
        from treasure.models.engine import SamplingParams

        n = resolve_max_tokens(max_tokens, self.config.default_max_tokens, self.config.max_tokens_limit)
        # The engine's budget is the answer's plus the block's: max_tokens bounds what the caller sees.
        return SamplingParams(max_tokens=n + self.block_tokens, temperature=req.temperature, top_p=req.top_p,
                              seed=req.seed or 0), n

    def _prepare(self, turn: tuple[Any, str], requested: dict[str, str], req: SamplingFields, max_tokens: int | None,
                 n: int = 1, logprobs: int | None = None) -> Prepared:
        from treasure.models.engine import prompt_token_ids

        params, answer_tokens = self._params(req, max_tokens)
        ids = prompt_token_ids(self.engine.tokenizer, *turn)
        check_prompt_tokens(len(ids), self.config.max_prompt_tokens)
        if self.config.log_requests:
            log.info(MODEL_INPUT_LOG + json.dumps({"prompt_token_ids": ids, "text": self.engine.tokenizer.decode(ids)}))
        if logprobs is not None and not self.is_async:
            raise LimitError(400, "logprobs needs the vllm engine (this server runs transformers)", param="logprobs")
        if logprobs is not None and getattr(req, "stream", False):
            raise LimitError(400, "logprobs is not supported with stream", param="logprobs")
        return Prepared(turn[0], turn[1], requested, params, len(ids), answer_tokens, tuple(req.stop or ()), n, ids, logprobs)

    def prepare_generate(self, req: GenerateRequest) -> Prepared:
        """Validate markers (MarkerError), bound tokens (LimitError), build the user turn."""
        requested = validate_requested(req.markers, self.taxonomy)
        return self._prepare(request_for_prompt(req.prompt, requested, self.taxonomy, self.config.prefill), requested,
                             req, req.max_tokens)

    def prepare_completion(self, req: CompletionRequest) -> Prepared:
        requested = validate_requested(req.markers, self.taxonomy)
        return self._prepare(request_for_prompt(req.prompt, requested, self.taxonomy, self.config.prefill), requested,
                             req, req.max_tokens, req.n, req.logprobs)

    def prepare_chat(self, req: ChatCompletionRequest) -> Prepared:
        requested = validate_requested(req.markers, self.taxonomy)
        return self._prepare(request_for_chat(req.messages, requested, self.taxonomy, self.config.prefill), requested,
                             req, req.max_completion_tokens or req.max_tokens, req.n,
                             (req.top_logprobs or 0) if req.logprobs else None)

    # --- engine calls ---------------------------------------------------------------------------
    def generate_batch(self, items: list[Prepared]) -> list[list[Any]]:
        """Transformers engine: one engine.generate per distinct SamplingParams in the batch; per item
        its `n` Generations, in input order."""
        groups: dict[str, list[int]] = {}
        for i, p in enumerate(items):
            groups.setdefault(p.params.model_dump_json(), []).append(i)
        out: list[list[Any]] = [[] for _ in items]
        try:
            for idx in groups.values():
                rows = [i for i in idx for _ in range(items[i].n)]
                gens = self.engine.generate([items[i].user_turn for i in rows], items[idx[0]].params,
                                            [items[i].prefix for i in rows])
                self.health.batches += 1
                self.health.batched_requests += len(idx)
                for i, g in zip(rows, gens):
                    out[i].append(g)
        except Exception as e:  # an engine failure, not a request problem: the health check will probe
            self._failed(e)
            raise
        return out

    def generate_isolated(self, items: list[Prepared]) -> list[list[Any] | Exception]:
        """`generate_batch`, where one request that breaks the batch fails only itself: after a batch
        failure each item is generated alone, and an item that fails alone gets its exception as its
        result (a lone item's failure is raised)."""
        try:
            return self.generate_batch(items)
        except Exception:
            if len(items) == 1:
                raise
        out: list[list[Any] | Exception] = []
        for item in items:
            try:
                out += self.generate_batch([item])
            except Exception as e:
                out.append(e)
        return out

    def results_for(self, prepared: Prepared, gens: list[Any]) -> list["Result"]:
        """Transformers engine: whole Generations → Results (answer cut to its budget and stop strings)."""
        results = []
        for g in gens:
            if g.finish_reason == "prompt_too_long":
                raise LimitError(400, f"prompt ({g.prompt_tokens} tokens) does not fit the model's context", param="prompt")
            answer = Answer(self.taxonomy, prepared)
            answer.budget = 0  # whole text at once: the budget is applied on tokens below
            text = answer.feed(g.text[len(prepared.prefix):], 0)
            last, finish, done = answer.end(g.finish_reason)
            text += last
            ids = self.engine.tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(ids) > prepared.answer_tokens:
                text, finish = self.engine.tokenizer.decode(ids[: prepared.answer_tokens]).rstrip(), "length"
            results.append(Result(text, finish, split_inferred(done.markers, prepared.requested), g.completion_tokens))
        return results

    async def arun(self, prepared: Prepared, index: int = 0) -> AsyncIterator[tuple[str, dict[str, Any] | None]]:
        """vLLM engine: (answer delta, None) as tokens arrive, then ('', summary) last. Choice `index`
        samples with seed + index. Leaving early (client gone, budget or stop string reached) aborts
        the request in the engine."""
        params = prepared.params.model_copy(update={"seed": prepared.params.seed + index})
        answer = Answer(self.taxonomy, prepared)
        steps = self.engine.steps(prepared.prompt_ids, params, logprobs=prepared.logprobs)
        reason = "stop"
        logprobs: list = []
        try:
            async for step in steps:
                out = answer.feed(step.text, step.tokens)
                if step.logprobs and answer.counted and answer.stops.stopped is False:
                    logprobs.extend(step.logprobs[: max(0, answer.budget - (answer.answer_tokens - step.tokens))]
                                    if answer.budget else step.logprobs)
                if out:
                    yield out, None
                if step.finish_reason:
                    reason = step.finish_reason
                if answer.finish:
                    break
        except Exception as e:
            if not isinstance(e, ValueError):  # a prompt the engine refuses is the request's problem
                self._failed(e)
            raise
        finally:
            await steps.aclose()
        last, finish, done = answer.end(reason)
        if last:
            yield last, None
        yield "", {"markers": {"requested": prepared.requested, "inferred": split_inferred(done.markers, prepared.requested)},
                   "usage": _usage(prepared.prompt_tokens, answer.tokens), "finish_reason": finish,
                   **({"logprobs": logprobs} if prepared.logprobs is not None else {})}

    async def agenerate(self, prepared: Prepared) -> list["Result"]:
        """vLLM engine: the request's `n` choices, generated concurrently."""
        import asyncio

        async def one(index: int) -> Result:
            text = ""
            async for delta, summary in self.arun(prepared, index):
                if summary is None:
                    text += delta
                else:
                    return Result(text, summary["finish_reason"], summary["markers"]["inferred"],
                                  summary["usage"]["completion_tokens"], summary.get("logprobs"))
            raise RuntimeError("generation ended without a summary")

        return list(await asyncio.gather(*(one(i) for i in range(prepared.n))))

    def _failed(self, e: BaseException) -> None:
        self.health.error, self.health.since = f"{type(e).__name__}: {e}", time.time()

    # --- response bodies --------------------------------------------------------------------------
    def _markers(self, prepared: Prepared, r: "Result") -> dict[str, Any]:
        return {"requested": prepared.requested, "inferred": r.inferred}

    def _usage_of(self, prepared: Prepared, results: list["Result"]) -> dict[str, int]:
        return _usage(prepared.prompt_tokens, sum(r.completion_tokens for r in results))

    def response_for(self, prepared: Prepared, results: list["Result"]) -> dict[str, Any]:
        """The /v1/generate body."""
        r = results[0]
        return {"text": r.text, "markers": self._markers(prepared, r), "finish_reason": r.finish_reason,
                "usage": self._usage_of(prepared, results), "model": self.model_name}

    def chat_response_for(self, prepared: Prepared, results: list["Result"]) -> dict[str, Any]:
        """An OpenAI `chat.completion` object; `markers` top level (first choice) and per choice."""
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": self.model_name,
            "choices": [{"index": i, "message": {"role": "assistant", "content": r.text},
                         "logprobs": _chat_logprobs(r.logprobs), "finish_reason": r.finish_reason,
                         "markers": self._markers(prepared, r)}
                        for i, r in enumerate(results)],
            "usage": self._usage_of(prepared, results), "markers": self._markers(prepared, results[0]),
        }

    def completion_response_for(self, prepared: Prepared, results: list["Result"]) -> dict[str, Any]:
        """An OpenAI `text_completion` object; `markers` top level (first choice) and per choice."""
        return {
            "id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
            "model": self.model_name,
            "choices": [{"index": i, "text": r.text, "logprobs": _completion_logprobs(r.logprobs),
                         "finish_reason": r.finish_reason, "markers": self._markers(prepared, r)}
                        for i, r in enumerate(results)],
            "usage": self._usage_of(prepared, results), "markers": self._markers(prepared, results[0]),
        }

    def models_body(self) -> dict[str, Any]:
        """GET /v1/models: the one model this server serves."""
        return {"object": "list", "data": [{"id": self.model_name, "object": "model", "created": self.created,
                                            "owned_by": "treasure-hunt"}]}

    def stream(self, prepared: Prepared) -> Iterator[tuple[str, dict[str, Any] | None]]:
        """Transformers engine: (answer delta, None) while generating, then ('', summary) last."""
        answer = Answer(self.taxonomy, prepared)
        # Pieces after the prefix (already fed), each with the number of generated tokens it came from:
        # the answer's budget counts the model's own tokens, as the plain path does.
        pieces = self.engine.stream_tokens(prepared.user_turn, prepared.params, prepared.prefix)
        try:
            for delta, tokens in pieces:
                out = answer.feed(delta, tokens)
                if out:
                    yield out, None
                if answer.finish:
                    break
        except Exception as e:
            self._failed(e)
            raise
        finally:
            pieces.close()  # stops the generation now when the answer ended early (budget, stop string)
        reason = "length" if answer.tokens >= prepared.params.max_tokens else "stop"
        last, finish, done = answer.end(reason)
        if last:
            yield last, None
        yield "", {
            "markers": {"requested": prepared.requested, "inferred": split_inferred(done.markers, prepared.requested)},
            "usage": _usage(prepared.prompt_tokens, min(answer.tokens, prepared.params.max_tokens)), "finish_reason": finish,
        }

    # --- metadata and health ------------------------------------------------------------------
    def taxonomy_body(self) -> dict[str, Any]:
        # Only the block's categories: they are what a caller may fix and what the model writes
        # (a taxonomy's `block:` may leave annotation-only categories out of it).
        allowed = allowed_values(self.taxonomy)
        return {
            "name": self.taxonomy.name, "version": self.taxonomy.version, "tag": self.taxonomy.tag,
            "categories": [{"name": c.name, "kind": c.kind, "description": c.description, "allowed": allowed[c.name],
                            "value_descriptions": _value_descriptions(c)}
                           for c in map(self.taxonomy.category, self.taxonomy.block_names)],
            "model": self.model_name, "markers_trained": bool(self.meta.get("markers", False)),
            # The model's own block may use this many tokens on top of a request's max_tokens.
            "block_max_tokens": self.block_tokens,
        }

    def stats(self) -> dict[str, Any]:
        import torch  # every engine runs on torch; its intra-op threads bound CPU throughput

        h = self.health
        return {"batches": h.batches, "batched_requests": h.batched_requests,
                "mean_batch_size": round(h.batched_requests / h.batches, 2) if h.batches else None,
                # Whether (and since when) the engine is suspect; never its exception text (that goes to the log).
                "engine_failed_since": h.since, "health_probes": h.probes, "torch_threads": torch.get_num_threads(),
                "engine": self.engine_kind, "engine_running": self.engine.running() if self.is_async else None}

    async def acheck_health(self) -> None:
        """`check_health` for either engine, from the event loop."""
        import asyncio

        if not self.is_async:
            await asyncio.to_thread(self.check_health)
            return
        await self.engine.check()  # raises once the engine core is dead
        if self.health.error is None:
            return
        from treasure.models.engine import SamplingParams, prompt_token_ids

        self.health.probes += 1
        try:
            async for _ in self.engine.steps(prompt_token_ids(self.engine.tokenizer, "ping"),
                                             SamplingParams(max_tokens=self.config.health_probe_tokens)):
                pass
        except Exception as e:
            raise RuntimeError(f"engine is broken: {type(e).__name__}: {e} (first failure: {self.health.error})") from e
        self.health.error = self.health.since = None

    def check_health(self) -> None:
        """Raise when the engine is broken. A recorded engine failure triggers a tiny probe generation;
        a probe that succeeds clears it (the failure was transient), one that fails keeps the replica unhealthy."""
        if self.health.error is None:
            return
        from treasure.models.engine import SamplingParams

        self.health.probes += 1
        try:
            self.engine.generate(["ping"], SamplingParams(max_tokens=self.config.health_probe_tokens))
        except Exception as e:
            raise RuntimeError(f"engine is broken: {type(e).__name__}: {e} (first failure: {self.health.error})") from e
        self.health.error = self.health.since = None


def resolve_engine(engine: str) -> str:
    """`auto` → vllm where vLLM is installed, else transformers; otherwise as given."""
    import importlib.util

    if engine != "auto":
        return engine
    return "vllm" if importlib.util.find_spec("vllm") is not None else "transformers"


def _value_descriptions(category) -> dict[str, str]:
    """{value: what it means} for /v1/taxonomy (the playground shows them): an enum's own value
    descriptions, a bucket's range of its source category; {} for numeric categories."""
    if category.kind == "bucket":
        out, low, src = {}, None, category.source
        for b in category.buckets:
            if b.below is None:
                out[b.value] = f"{src} >= {low:g}" if low is not None else f"any {src}"
            else:
                out[b.value] = f"{low:g} <= {src} < {b.below:g}" if low is not None else f"{src} < {b.below:g}"
            low = b.below
        return out
    return {v.value: v.description for v in category.values if v.description}


def _default_name(checkpoint: str) -> str:
    """`models:/name/3` → 'name/3'; a folder or URI → its last path part."""
    if is_registry_uri(checkpoint):
        return registry_name(checkpoint)
    return Path(checkpoint.rstrip("/")).name


def _chat_logprobs(lps: list | None) -> dict | None:
    """OpenAI chat `logprobs` for the answer's tokens (the marker block is not part of the answer)."""
    if lps is None:
        return None
    return {"content": [{"token": t, "logprob": lp, "bytes": list(t.encode()),
                         "top_logprobs": [{"token": a, "logprob": alp, "bytes": list(a.encode())} for a, alp in alts]}
                        for t, lp, alts in lps]}


def _completion_logprobs(lps: list | None) -> dict | None:
    """OpenAI completions `logprobs` (tokens, token_logprobs, top_logprobs, text_offset) for the answer."""
    if lps is None:
        return None
    offsets, at = [], 0
    for t, _, _ in lps:
        offsets.append(at)
        at += len(t)
    return {"tokens": [t for t, _, _ in lps], "token_logprobs": [lp for _, lp, _ in lps],
            "top_logprobs": [dict(alts) for _, _, alts in lps], "text_offset": offsets}


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
