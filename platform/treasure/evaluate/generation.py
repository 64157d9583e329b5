"""Batched generation for evaluation: requests → engine → parsed rows (pure), over Ray Data (shell).

A request row carries `request_id`, `user_turn` and `prefix`, both from
`treasure.template.render_request` (the prompt-side block already in the user turn; the prefix opens
the model's own block with the requested markers, '' when none is prefilled; a row without the
column has none), plus any columns the caller wants back. Each result row adds:

    raw            the model's full output (starts with the prefix: block + answer)
    answer         the answer with the block parsed off (never contains block text)
    inferred       JSON {category: value} the model wrote in its block ({} for a baseline)
    block_ok       the output opened and closed a block with no parse problems
    problems       JSON list of parse problems
    finish_reason  stop / length / prompt_too_long
    completion_tokens

`generate_rows` returns rows in request order, one model at a time. With the vllm backend it runs
Ray Data's own LLM processor (`ray.data.llm`, vLLM engine actors: continuous batching, tensor
parallelism on GPU clusters, the CPU wheel on CPU boxes); with transformers an actor pool of our
engines. `generate_local` does the same in-process (tests, tiny jobs).
"""

from __future__ import annotations

import json
from typing import Any

from treasure.models.engine import EngineConfig, Generation, SamplingParams, load_engine
from treasure.resources import Pool
from treasure.taxonomy import Taxonomy
from treasure.template import split_output


def parse_generation(gen: Generation, taxonomy: Taxonomy, marked: bool) -> dict[str, Any]:
    """Result columns for one generation; a baseline's text is all answer (no block expected)."""
    if not marked:
        return {"raw": gen.text, "answer": gen.text.strip(), "inferred": "{}", "block_ok": False, "problems": "[]",
                "finish_reason": gen.finish_reason, "completion_tokens": gen.completion_tokens}
    parsed = split_output(gen.text, taxonomy)
    return {"raw": gen.text, "answer": parsed.answer, "inferred": json.dumps(parsed.markers), "block_ok": not parsed.problems,
            "problems": json.dumps(parsed.problems), "finish_reason": gen.finish_reason, "completion_tokens": gen.completion_tokens}


def run_requests(engine, rows: list[dict], params: SamplingParams, taxonomy: Taxonomy, marked: bool) -> list[dict]:
    """Generate for `rows` on one engine; the text starts with each row's prefix, so the block still parses."""
    gens = engine.generate([r["user_turn"] for r in rows], params, [prefix_of(r) for r in rows])
    return [{**r, **parse_generation(g, taxonomy, marked)} for r, g in zip(rows, gens)]


def prefix_of(row: dict) -> str:
    """The row's assistant prefix ('' when it has none); Ray Data hands strings back as numpy scalars."""
    return str(row.get("prefix") or "")


def generate_local(rows: list[dict], engine_config: EngineConfig, params: SamplingParams, taxonomy: Taxonomy, marked: bool) -> list[dict]:
    """In-process generation (no Ray): same rows out as `generate_rows`."""
    return run_requests(load_engine(engine_config), rows, params, taxonomy, marked)


class EngineActor:
    """The engine of one model on a Ray actor (loaded on first use); rows name their model."""

    def __init__(self, engines: dict[str, dict], marked: dict[str, bool], params: dict, taxonomy: Taxonomy):
        self.configs = {name: EngineConfig.model_validate(c) for name, c in engines.items()}
        self.engines: dict = {}
        self.marked, self.taxonomy = marked, taxonomy
        self.params = SamplingParams.model_validate(params)

    def __call__(self, batch: dict) -> dict:
        rows = [{"request_id": i, "model": m, "user_turn": u, "prefix": str(p)}
                for i, m, u, p in zip(batch["request_id"], batch["model"], batch["user_turn"], batch["prefix"])]
        out: dict[str, dict] = {}
        for name in dict.fromkeys(r["model"] for r in rows):
            if name not in self.engines:
                self.engines[name] = load_engine(self.configs[name])
            sel = [r for r in rows if r["model"] == name]
            for r in run_requests(self.engines[name], sel, self.params, self.taxonomy, self.marked[name]):
                out[r["request_id"]] = r
        ordered = [out[r["request_id"]] for r in rows]
        return {k: [r[k] for r in ordered] for k in ordered[0]} if ordered else {}


def generate_rows(rows: list[dict], engines: dict[str, EngineConfig], marked: dict[str, bool], params: SamplingParams, taxonomy: Taxonomy, *,
                  pool: Pool | None = None, batch_size: int = 16) -> list[dict]:
    """Generate for every request row over Ray Data actor pools (one per model, in turn); rows come back in order, with their own columns.

    Each row needs `request_id` (unique per model), `model` (a key of `engines`) and `user_turn`, and may
    carry `prefix`; its other columns travel untouched (Ray Data only sees these four). `pool` is
    each model's engine actors (count, CPUs, GPUs, custom resources that pin them to some nodes).
    """
    import ray

    pool = pool or Pool()
    if not rows:
        return []
    ids = [f"{r['model']}/{r['request_id']}" for r in rows]
    if len(set(ids)) != len(ids):
        raise ValueError("request_id must be unique per model")
    unknown = {r["model"] for r in rows} - set(engines)
    if unknown:
        raise ValueError(f"rows name models without an engine: {sorted(unknown)}")
    slim = [{"request_id": i, "model": r["model"], "user_turn": r["user_turn"], "prefix": prefix_of(r)} for i, r in zip(ids, rows)]
    got: dict[str, dict] = {}
    # One model at a time, each on its own actor pool: an actor never holds two engines (two vLLM
    # engines in one process would each claim the KV-cache memory), and the pool is gone before the next starts.
    for name in dict.fromkeys(r["model"] for r in slim):
        mine = [r for r in slim if r["model"] == name]
        if engines[name].backend == "vllm":
            got.update(_generate_vllm(mine, engines[name], marked[name], params, taxonomy, pool=pool, batch_size=batch_size))
            continue
        ds = ray.data.from_items(mine).map_batches(
            EngineActor,
            fn_constructor_kwargs={"engines": {name: engines[name].model_dump()}, "marked": {name: marked[name]},
                                   "params": params.model_dump(), "taxonomy": taxonomy},
            batch_size=batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=pool.count),
            num_cpus=pool.num_cpus, num_gpus=pool.num_gpus or None, resources=pool.resources or None,
        )
        got.update({r["request_id"]: {k: _plain(v) for k, v in r.items()} for r in ds.take_all()})
    missing = [i for i in ids if i not in got]
    if missing:
        raise RuntimeError(f"{len(missing)} requests came back without a generation (first: {missing[0]})")
    return [{**r, **{k: v for k, v in got[i].items() if k != "request_id"}} for i, r in zip(ids, rows)]


def _generate_vllm(rows: list[dict], engine: EngineConfig, marked: bool, params: SamplingParams, taxonomy: Taxonomy, *,
                   pool: Pool, batch_size: int) -> dict[str, dict]:
    """One model's rows through `ray.data.llm`'s vLLM engine processor; result columns by request id.

    Prompts are token ids (chat-templated user turn + prefix, tokenized apart as in training), so
    the processor's own chat-template and tokenizer stages are off; vLLM detokenizes itself.
    """
    import ray
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig
    from transformers import AutoTokenizer

    from treasure.models.engine import effective_temperature, prompt_token_ids
    from treasure.models.engine import engine_kwargs
    from treasure.models.processor import batch_engine_kwargs, cpu_engine_env, reshape_map_kwargs

    kwargs = engine_kwargs(engine) | batch_engine_kwargs(pool.num_gpus > 0, engine.max_num_batched_tokens)
    folder = kwargs.pop("model")
    kwargs.pop("seed")  # sampling seeds are per request
    tokenizer = AutoTokenizer.from_pretrained(folder)
    context = engine.max_model_len or int(getattr(_model_config(folder), "max_position_embeddings", 2048))
    out: dict[str, dict] = {}
    todo = []
    for r in rows:
        ids = prompt_token_ids(tokenizer, r["user_turn"], r["prefix"])
        if len(ids) >= context:  # a per-row outcome, as the transformers engine records it
            out[r["request_id"]] = {**r, **parse_generation(Generation("", len(ids), 0, "prompt_too_long"), taxonomy, marked)}
        else:
            # `row_key`, not `request_id`: the processor writes its own `request_id` column.
            todo.append({"row_key": r["request_id"], "ids": ids, "prefix": r["prefix"]})
    if not todo:
        return out
    bundle = pool.bundle()
    sampling = {"temperature": effective_temperature(params.temperature), "top_p": params.top_p,
                "max_tokens": params.max_tokens, "seed": params.seed, **({"stop": list(params.stop)} if params.stop else {})}
    processor = build_processor(
        vLLMEngineProcessorConfig(
            model_source=folder, engine_kwargs=kwargs, batch_size=batch_size, concurrency=pool.count,
            placement_group_config={"bundles": [bundle]},
            chat_template_stage=False, tokenize_stage=False, detokenize_stage=False,
            runtime_env=cpu_engine_env(gpu=pool.num_gpus > 0),
        ),
        preprocess=lambda r: {"tokenized_prompt": list(r["ids"]), "sampling_params": sampling},
        postprocess=lambda r: {"row_key": r["row_key"], "prefix": r["prefix"], "text": r["generated_text"],
                               "prompt_tokens": r["num_input_tokens"], "completion_tokens": r["num_generated_tokens"]},
        preprocess_map_kwargs=reshape_map_kwargs(), postprocess_map_kwargs=reshape_map_kwargs(),
    )
    blocks = max(1, -(-len(todo) // batch_size))  # engine-batch-sized blocks, not one block per row
    for r in processor(ray.data.from_items(todo, override_num_blocks=blocks)).take_all():
        n = int(r["completion_tokens"])
        gen = Generation(str(r["prefix"] or "") + r["text"], int(r["prompt_tokens"]), n,
                         "length" if n >= params.max_tokens else "stop")
        out[r["row_key"]] = {"request_id": r["row_key"], **parse_generation(gen, taxonomy, marked)}
    return out


def _model_config(folder: str):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(folder)


def _plain(v):
    """numpy scalars from Ray Data → Python values (JSON-able)."""
    return v.item() if hasattr(v, "item") else v
