"""The Ray Serve application: HTTP routes over treasure.serving.server.ModelServer.

Run (from the repository root, Ray started locally by `serve run`):
    serve run treasure.serving.app:build_app checkpoint=runs/demo/checkpoints/marked
    serve run treasure.serving.app:build_app checkpoint=runs/demo/checkpoints/marked max_batch_size=4 api_docs=true
Deploy on a running cluster with autoscaling: `serve deploy serving/serve_config.yaml` (Serve's own
deploy config; its `args:` are ServeConfig fields). `config=FILE` instead reads the `serve:` section
of a YAML file of yours (none ships), with `key=value` arguments on top.

Routes: POST /v1/generate, POST /v1/completions and /v1/chat/completions (OpenAI-compatible,
`markers` as an extra body field, SSE streaming), GET /v1/models, GET /v1/taxonomy, GET /healthz, and
the marker playground page at GET /playground/ (`/` redirects there; `playground: false` turns it off).
With `engine: vllm` every request goes straight to vLLM's async engine (continuous batching, token
streams; a stream the client leaves is aborted in the engine). With `engine: transformers` (the
fallback without vLLM) non-streamed requests are batched with @serve.batch over the engine's
batched generate. Overload beyond max_ongoing_requests + max_queued_requests is answered 503 by
Serve itself, before any work is done, for streams as for plain requests.

What a client sees of a failure is its kind and an incident id; the exception itself goes to the
replica's log under that id (`/healthz`, stream error events and 503 bodies never carry it). Which
failure becomes which status and body is decided in treasure.serving.errors (no Ray); this module
only routes. /docs and /openapi.json exist only with `api_docs: true`.
"""

import asyncio
import json
import time
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError
from ray import serve
from starlette.concurrency import iterate_in_threadpool

from treasure.config import load_config
from treasure.json_input import JSONInputError, parse_json
from treasure.serving import errors, playground, sse
from treasure.serving.api_models import MAX_JSON_DEPTH, ChatCompletionRequest, CompletionRequest, GenerateRequest
from treasure.serving.auth import AuthError, check_bearer, check_exposure, token_from_env
from treasure.serving.batching import ConcurrencyTracker
from treasure.serving.config import ServeConfig
from treasure.serving.limits import BodyLimitMiddleware, LimitError
from treasure.serving.server import ModelServer, Prepared
from treasure.serving.timing import server_timing


def _proxy_host() -> str | None:
    """The host Serve's HTTP proxy listens on (None when the controller cannot be asked)."""
    try:
        from ray.serve.context import _get_global_client

        return _get_global_client().http_config.host
    except Exception:
        return None


def _answer(error: errors.ErrorAnswer) -> JSONResponse:
    return JSONResponse(error.body, status_code=error.status, headers=error.headers)


def _inline_schema(model: type[BaseModel]) -> dict:
    """The model's JSON schema with $defs inlined, for the OpenAPI document (schema fuzzing reads it)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def walk(node):
        if isinstance(node, dict):
            if "$ref" in node and node["$ref"].startswith("#/$defs/"):
                return walk(defs[node["$ref"].split("/")[-1]])
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(schema)


def _body_doc(model: type[BaseModel]) -> dict:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": _inline_schema(model)}}}}


def make_deployment(config: ServeConfig):
    """The Serve deployment class for `config` (the FastAPI app carries the config's body limit)."""
    docs = {} if config.api_docs else {"docs_url": None, "redoc_url": None, "openapi_url": None}
    api = FastAPI(title="Treasure Hunt model server", version="1", **docs)
    api.add_middleware(BodyLimitMiddleware, limit=config.max_body_bytes)

    @serve.deployment(
        name="TreasureServer",
        max_ongoing_requests=config.max_ongoing_requests,
        max_queued_requests=config.max_queued_requests,
        ray_actor_options={"num_cpus": config.num_cpus, "num_gpus": config.num_gpus},
        health_check_period_s=5, health_check_timeout_s=30,
    )
    @serve.ingress(api)
    class TreasureServer:
        def __init__(self, config_json: str):
            self.config = ServeConfig.model_validate_json(config_json)
            self.token = token_from_env(self.config.auth_token_env)
            check_exposure(self.token is not None, _proxy_host(), self.config.allow_unauthenticated)
            self.core = ModelServer(self.config)
            self._batched.set_max_batch_size(self.config.max_batch_size)
            self._batched.set_batch_wait_timeout_s(0.0)
            self.concurrency = ConcurrencyTracker()

        # --- plumbing -----------------------------------------------------------------------------
        async def _parse(self, request: Request, model: type[BaseModel]):
            check_bearer(request.headers.get("authorization"), self.token)
            try:
                data = parse_json(await request.body(), max_depth=MAX_JSON_DEPTH)
            except JSONInputError as e:
                raise errors.unreadable_body(e) from None
            try:
                return model.model_validate(data)
            except ValidationError as e:
                raise errors.invalid_body(e) from None

        async def _handle(self, request: Request, model, prepare, respond, events):
            try:
                t0 = time.perf_counter()
                req = await self._parse(request, model)
                t1 = time.perf_counter()
                prepared = prepare(req)
                t2 = time.perf_counter()
                if req.stream:
                    if prepared.n > 1:
                        raise LimitError(400, "stream supports n=1 only", param="n")
                    return StreamingResponse(self._events(events, prepared), media_type="text/event-stream",
                                             headers={"Cache-Control": "no-cache"})
                if self.core.is_async:
                    started = time.perf_counter()
                    results = await self.core.agenerate(prepared)
                    ended = time.perf_counter()
                else:
                    self.concurrency.enter()
                    try:
                        # Wait for a batch to fill only while other clients are around (see batching.py).
                        self._batched.set_batch_wait_timeout_s(self.concurrency.batch_wait(self.config.batch_wait_timeout_s))
                        gens, started, ended = await self._batched(prepared)
                    finally:
                        self.concurrency.exit()
                    if isinstance(gens, Exception):  # this request broke the batch (the others were answered)
                        raise gens
                    results = self.core.results_for(prepared, gens)
                t3 = time.perf_counter()
                response = JSONResponse(respond(prepared, results))
                t4 = time.perf_counter()
                # queue: batch wait + hop into the worker thread; back: hop out of it to this request.
                response.headers["Server-Timing"] = server_timing({
                    "parse": t1 - t0, "prepare": t2 - t1, "queue": started - t2, "engine": ended - started,
                    "back": t3 - ended, "respond": t4 - t3, "total": t4 - t0})
                return response
            except Exception as e:  # the client's fault: 4xx; an engine failure: 503 with an incident id
                return _answer(errors.request_error(e, self.core.taxonomy))

        @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.003)
        async def _batched(self, items: list[Prepared]) -> list[tuple[Any, float, float]]:
            # The engine call blocks; a worker thread keeps the replica's event loop answering.
            return await asyncio.to_thread(self._timed_generate, items)

        def _timed_generate(self, items: list[Prepared]) -> list[tuple[Any, float, float]]:
            """(Generations or the item's own failure, engine start, engine end) per item; the times feed
            Server-Timing. A request that breaks the batch fails alone (generate_isolated)."""
            started = time.perf_counter()
            gens = self.core.generate_isolated(items)
            ended = time.perf_counter()
            return [(g, started, ended) for g in gens]

        # --- routes -------------------------------------------------------------------------------
        @api.post("/v1/generate", openapi_extra=_body_doc(GenerateRequest))
        async def generate(self, request: Request):
            return await self._handle(request, GenerateRequest, self.core.prepare_generate, self.core.response_for,
                                      self._generate_events)

        @api.post("/v1/completions", openapi_extra=_body_doc(CompletionRequest))
        async def completions(self, request: Request):
            return await self._handle(request, CompletionRequest, self.core.prepare_completion,
                                      self.core.completion_response_for, self._completion_events)

        @api.post("/v1/chat/completions", openapi_extra=_body_doc(ChatCompletionRequest))
        async def chat_completions(self, request: Request):
            return await self._handle(request, ChatCompletionRequest, self.core.prepare_chat,
                                      self.core.chat_response_for, self._chat_events)

        @api.get("/v1/models")
        async def models(self, request: Request):
            try:
                check_bearer(request.headers.get("authorization"), self.token)
            except AuthError as e:
                return _answer(errors.unauthorized(e))
            return self.core.models_body()

        @api.get("/v1/taxonomy")
        async def taxonomy(self, request: Request):
            try:
                check_bearer(request.headers.get("authorization"), self.token)
            except AuthError as e:
                return _answer(errors.unauthorized(e))
            return self.core.taxonomy_body()

        @api.get("/healthz")
        async def healthz(self):
            try:
                await self.core.acheck_health()
            except Exception as e:
                return _answer(errors.unhealthy(e))
            return {"status": "ok", "model": self.core.model_name, "taxonomy_version": self.core.taxonomy.version,
                    **self.core.stats()}

        # --- the playground page (static, no secrets: no auth; its API calls carry the typed token) --
        @api.get("/", include_in_schema=False)
        @api.get("/playground", include_in_schema=False)
        async def to_playground(self, request: Request):
            if not self.config.playground:
                return _answer(errors.not_found())
            # root_path: the application's route prefix, so the redirect stays inside this application.
            return RedirectResponse(f"{request.scope.get('root_path', '')}/playground/", status_code=307)

        @api.get("/playground/", include_in_schema=False)
        @api.get("/playground/{name}", include_in_schema=False)
        async def playground_page(self, name: str = "index.html"):
            if not self.config.playground or name not in playground.ASSETS:
                return _answer(errors.not_found())
            body, media = playground.asset(name)
            return Response(body, media_type=media, headers=playground.HEADERS)

        async def check_health(self):
            """Serve's replica health check: raising makes Serve replace this replica."""
            await self.core.acheck_health()

        # --- streaming ------------------------------------------------------------------------------
        async def _events(self, events, prepared: Prepared):
            """SSE events of one streamed request: `events` shapes the deltas; an engine failure after
            the headers went out is reported in-band as an error event, then the stream ends."""
            if self.core.is_async:
                deltas = self.core.arun(prepared)
            else:  # the transformers stream is a blocking iterator: run it off the event loop
                deltas = iterate_in_threadpool(self.core.stream(prepared))
            try:
                async for line in events(deltas):
                    yield line
            except Exception as e:
                yield sse.event(errors.stream_error(e))
            yield sse.DONE

        async def _generate_events(self, deltas):
            async for delta, summary in deltas:
                if summary is None:
                    yield sse.event({"text": delta})
                else:
                    yield sse.event({**summary, "model": self.core.model_name})

        async def _chat_events(self, deltas):
            cid, created, model = f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), self.core.model_name
            yield sse.chat_chunk(cid, created, model, {"role": "assistant", "content": ""})
            async for delta, summary in deltas:
                if summary is None:
                    yield sse.chat_chunk(cid, created, model, {"content": delta})
                else:
                    yield sse.chat_chunk(cid, created, model, {}, summary["finish_reason"],
                                         markers=summary["markers"], usage=summary["usage"])

        async def _completion_events(self, deltas):
            cid, created, model = f"cmpl-{uuid.uuid4().hex}", int(time.time()), self.core.model_name
            async for delta, summary in deltas:
                if summary is None:
                    yield sse.completion_chunk(cid, created, model, delta)
                else:
                    yield sse.completion_chunk(cid, created, model, "", summary["finish_reason"],
                                               markers=summary["markers"], usage=summary["usage"])

    return TreasureServer


def build_app(args: dict[str, Any]):
    """The Serve application for `args`: `config=<yaml with a serve: section>` plus ServeConfig overrides.

    `serve run treasure.serving.app:build_app checkpoint=PATH` passes strings; a `serve deploy` config passes
    its `args:` mapping. With auth on, each replica reads the token from its own process environment
    (the Ray node's); nothing secret is put in the application or its runtime env, which the
    dashboard shows.
    """
    args = dict(args or {})
    path = args.pop("config", None)
    overrides = [f"{k}={v if not isinstance(v, (dict, list)) else json.dumps(v)}" for k, v in args.items()]
    config = load_config(ServeConfig, path, overrides, section="serve" if path else None)
    return make_deployment(config).bind(config.model_dump_json())
