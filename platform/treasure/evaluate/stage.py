"""The evaluate stage: held-out prompts → generations of both models → metrics → report → MLflow.

    run(config) assumes Ray is up; it reads the annotated dataset and both checkpoints, generates
    every answer it needs in one pass per model (Ray Data actor pool), scores length control,
    marker inference, adherence and win rates (only with a judge: winrate.not_measured_reason),
    and publishes under `output`. Every request is rendered by treasure.template.render_request,
    as serving renders it (`prefill` decides whether requested markers open the model's block):

    metrics.json, report.md, *.png     the report (also logged to MLflow as artifacts)
    data/generations.parquet           every request with its raw output, parsed answer, markers
    manifest.json                      written last (the stage contract, treasure.stage)
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from treasure import storage
from treasure.models.engine import EngineConfig, auto_dtype
from treasure.evaluate import adherence, inference, length_control, metrics, report, winrate
from treasure.evaluate.config import EvaluateConfig
from treasure.evaluate.examples import read_annotated, sample, split, value_counts
from treasure.evaluate.generation import generate_rows
from treasure.resources import check_pools
from treasure.stage import Attempt, Plan, Result, Stage


def read_model(uri: str):
    """The validated checkpoint at `uri` (local folder, taxonomy, treasure.json), local or s3://."""
    from treasure.models.checkpoint import read_checkpoint

    return read_checkpoint(uri)


def _generate(requests: dict[str, list[dict]], folders: dict[str, str], config: EvaluateConfig, taxonomy) -> list[dict]:
    """Both models' requests, one model at a time on its own actor pool (never two engines in one actor)."""
    g = config.generation
    dtype = g.dtype or auto_dtype(g.backend, "cuda" if g.pool.num_gpus > 0 else g.device)
    engines = {name: EngineConfig(model=folder, backend=g.backend, device=g.device, batch_size=g.batch_size, dtype=dtype)
               for name, folder in folders.items()}
    rows = [{**r, "model": name} for name, rs in requests.items() for r in rs]
    return generate_rows(rows, engines, {"baseline": False, "marked": True}, g.sampling, taxonomy, pool=g.pool,
                         batch_size=g.batch_size)


def plan(config: EvaluateConfig, taxonomy, held, counts, quality_reference) -> dict[str, list[dict]]:
    """Every request, per model (pure: no model needed)."""
    c = config.categories
    outside = [cat for cat in [*c.inference_categories, *c.adherence_categories, config.length_control.length_marker]
               if cat in taxonomy.names and cat not in taxonomy.block_names]
    if outside:
        raise ValueError(f"evaluate asks the model about {sorted(set(outside))}, which taxonomy {taxonomy.name!r} leaves out of "
                         f"the marker block (block: {taxonomy.block_names})")
    # Win-rate requests only where a judge will read them: without one they cost generation and mean nothing.
    win_n = config.win_rate.prompts if winrate.not_measured_reason(config.win_rate) is None else 0
    plain = inference.requests(sample(held, max(c.inference_prompts, win_n), config.seed, "plain"), taxonomy)
    lc = length_control.requests(sample(length_control.eligible(held, config.length_control, taxonomy), config.length_control.prompts, config.seed, "length"),
                                 config.length_control, taxonomy, prefill=config.prefill) \
        if config.length_control.prompts else {"baseline": [], "marked": []}
    adh = _adherence_requests(config, taxonomy, held, counts)
    quality = winrate.quality_requests(sample(held, win_n, config.seed, "plain"), quality_reference, taxonomy, prefill=config.prefill) \
        if win_n and "quality_bucket" in taxonomy.block_names else []
    return {"baseline": plain[:win_n] + lc["baseline"], "marked": plain + lc["marked"] + adh + quality}


def _adherence_requests(config: EvaluateConfig, taxonomy, held, counts) -> list[dict]:
    """Adherence rows; length_bucket draws its prompts from the over-limit pool (adherence.length_eligible)."""
    c = config.categories
    if not c.adherence_prompts_per_value:
        return []
    adh_plan = {cat: adherence.values_to_test(cat, taxonomy, counts, c.adherence_max_values)
                for cat in c.adherence_categories if cat in taxonomy.block_names}
    examples = {}
    for cat in adh_plan:
        pool = adherence.length_eligible(held, taxonomy) if cat == "length_bucket" and c.adherence_length_over_limit else held
        examples[cat] = sample(pool, c.adherence_prompts_per_value, config.seed, "adherence")
    return adherence.requests(examples, adh_plan, taxonomy, prefill=config.prefill)


def score_all(config: EvaluateConfig, taxonomy, rows: list[dict], bands, judge, train_counts: dict | None = None) -> dict:
    """Metrics from generated rows (rows carry `model` and `request_id`)."""
    # A prompt the model's context cannot hold has no answer to score: it is counted, and its
    # example leaves every comparison it belongs to (so conditions stay paired).
    too_long = [r for r in rows if r["finish_reason"] == "prompt_too_long"]
    dropped = {r["example_id"] for r in too_long}
    out: dict = {"prompt_too_long": {"requests": len(too_long), "examples": len(dropped)}}
    rows = [r for r in rows if r["example_id"] not in dropped]
    by_id = {(r["model"], r["request_id"]): r for r in rows}
    marked = [r for r in rows if r["model"] == "marked"]
    lc_rows = [r for r in rows if r["request_id"].startswith("lc:")]
    for r in lc_rows:
        r["words"] = adherence.word_count(r["answer"], r["language"])
    if lc_rows:
        out["length_control"] = length_control.score(lc_rows)
        out["length_control"]["selection"] = ("held-out prompts whose reference answer is longer than the limit"
                                              if config.length_control.prompts_over_limit else "any held-out prompt")
    plain_marked = [r for r in marked if r["request_id"].startswith("plain:")]
    if config.categories.inference_prompts:
        out["inference"] = inference.score(plain_marked[: config.categories.inference_prompts], config.categories.inference_categories, bands,
                                           train_counts)
    adh_rows = [r for r in marked if r["request_id"].startswith("adh:")]
    for r in adh_rows:
        r["observed"] = adherence.reannotate(r["answer"], r["category"], r["language"], taxonomy)
        if adherence.is_length(r["category"]):
            r["words"] = adherence.word_count(r["answer"], r["language"])
    if adh_rows:
        order = {cat: [b.value for b in taxonomy.category(cat).buckets] for cat in {r["category"] for r in adh_rows}
                 if adherence.is_length(cat) and taxonomy.category(cat).kind == "bucket"}
        out["adherence"] = adherence.score(adh_rows, bands, order)
        if "length_bucket" in out["adherence"]["categories"]:
            out["adherence"]["length_bucket_selection"] = (
                "held-out prompts whose reference answer is longer than the smallest bucket's limit"
                if config.categories.adherence_length_over_limit else "the same held-out prompts as the other categories")
    if judge is not None:
        out["win_rates"] = _win_rates(config, rows, by_id, lc_rows, bands, judge)
    return out


def _win_rates(config, rows, by_id, lc_rows, bands, judge) -> dict:
    comparisons: dict[str, list[tuple[dict, dict]]] = {}
    for prefix, name in (("plain:", "marked_inferred"), ("quality:", "quality_steered")):
        cands = [r for r in rows if r["model"] == "marked" and r["request_id"].startswith(prefix)][: config.win_rate.prompts]
        comparisons[name] = [(r, by_id[("baseline", f"plain:{r['example_id']}")]) for r in cands if ("baseline", f"plain:{r['example_id']}") in by_id]
    for cond in ("marked_instruction", "marked_marker"):
        comparisons[f"length_{cond}"] = length_control.non_violating_pairs(lc_rows, cond)[: config.win_rate.prompts]
    flat = [(name, a, b) for name, pairs in comparisons.items() for a, b in pairs]
    judged = judge.judge([a["prompt"] for _, a, _ in flat], [a["answer"] for _, a, _ in flat], [b["answer"] for _, _, b in flat]) if flat else []
    out = {}
    for name in comparisons:
        idx = [i for i, (n, _, _) in enumerate(flat) if n == name]
        ann = [json.loads(by_id.get(("marked", f"plain:{flat[i][1]['example_id']}"), {}).get("annotated", "{}")) for i in idx]
        out[name] = winrate.summarize([judged[i] for i in idx], ann, bands, n_resamples=config.win_rate.bootstrap_resamples, seed=config.seed)
        for i in idx:
            j = judged[i]  # kept with the candidate row: outcome and the judge's raw answers
            flat[i][1].setdefault("judgements", {})[name] = {"outcome": j.outcome, "first": j.first, "second": j.second,
                                                             "raw_first": j.raw_first, "raw_second": j.raw_second}
    return out


def plan_evaluate(config: EvaluateConfig) -> Plan:
    """Both checkpoints and the held-out rows read, every request planned (no model loaded yet)."""
    base, marked = read_model(config.baseline), read_model(config.marked)
    base_meta, marked_meta = base.meta, marked.meta
    if not marked_meta.get("markers"):
        raise ValueError(f"{config.marked}: treasure.json says markers=false; `marked` must be a model trained with markers")
    taxonomy = marked.taxonomy  # the taxonomy the marked model was trained with
    rows, in_manifest = read_annotated(config.input)
    train_rows, held_all = split(rows, config.heldout_seed, config.heldout_fraction)
    held = [e for e in held_all if len(e.prompt) <= config.max_prompt_chars]
    if not held:
        raise ValueError(f"no held-out rows in {config.input} at heldout_fraction={config.heldout_fraction} "
                         f"with prompts of at most {config.max_prompt_chars} characters; raise either")
    counts = value_counts(train_rows)
    bands = metrics.value_bands(counts, config.tail_fraction)
    requests = plan(config, taxonomy, held, counts, marked_meta.get("quality_reference") or {})
    lineage = {"input": config.input, "input_manifest_id": in_manifest.get("manifest_id"), "baseline": config.baseline,
               "marked": config.marked, "baseline_step": base_meta.get("step"), "marked_step": marked_meta.get("step"),
               "baseline_mlflow_run_id": base_meta.get("mlflow_run_id"), "marked_mlflow_run_id": marked_meta.get("mlflow_run_id")}
    data = {"input": config.input, "rows": len(rows), "heldout_rows": len(held_all), "heldout_used": len(held),
            "train_rows": len(train_rows)}
    return Plan(run_name="evaluate", taxonomy=taxonomy, lineage=lineage, state={
        "requests": requests, "folders": {"baseline": str(base.local_dir), "marked": str(marked.local_dir)},
        "counts": counts, "bands": bands, "data": data, "input_manifest_id": in_manifest.get("manifest_id")})


def work(config: EvaluateConfig, plan_: Plan, attempt: Attempt) -> Result:
    """Generate every answer, score, and stage the report and the generations table."""
    taxonomy, st = plan_.taxonomy, plan_.state
    check_pools({"evaluate.generation.pool": config.generation.pool},
                "lower evaluate.generation.pool's count / num_cpus / num_gpus, or start nodes with its resources")
    generated = _generate(st["requests"], st["folders"], config, taxonomy)
    judge, not_measured = None, winrate.not_measured_reason(config.win_rate)
    if not_measured is None:
        from treasure.evaluate.judge import load_judge

        judge = load_judge(config.win_rate.judge)
    m = score_all(config, taxonomy, generated, st["bands"], judge, st["counts"])
    if not_measured is not None:
        m["win_rates_not_measured"] = not_measured
    m.update(models={"baseline": config.baseline, "marked": config.marked}, taxonomy_version=taxonomy.version,
             judge=f"{config.win_rate.judge.type}:{config.win_rate.judge.model}" if judge is not None else "none",
             prefill=config.prefill, data=st["data"], bands=st["bands"], generations=len(generated))
    flat = _stage_report(m, generated, attempt)
    return Result(summary={"metrics": flat}, manifest={"rows": len(generated), "input_manifest_id": st["input_manifest_id"]})


STAGE = Stage("evaluate", plan=plan_evaluate, work=work)


def run(config: EvaluateConfig, *, parent_run_id: str | None = None) -> dict:
    """Evaluate the pair and publish the report (through the stage contract, treasure.stage); returns the summary."""
    return STAGE.run(config, parent_run_id=parent_run_id)


def _stage_report(m: dict, generated: list[dict], attempt: Attempt) -> dict:
    """The report files and the generations table into the attempt's staging and MLflow; returns the flat metrics."""
    import mlflow
    import pyarrow as pa
    import pyarrow.parquet as pq

    flat = report.flat_metrics(m)
    mlflow.log_metrics({k.replace(":", "_"): v for k, v in flat.items()})
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        files = report.write(m, folder)
        table_rows = [{k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in r.items()} for r in generated]
        cols = sorted({k for r in table_rows for k in r})
        pq.write_table(pa.table({c: [None if r.get(c) is None else str(r.get(c)) for r in table_rows] for c in cols}), folder / "generations.parquet")
        mlflow.log_artifacts(str(folder), "evaluation")
        for f in files + [folder / "generations.parquet"]:
            storage.write_bytes(attempt.path(f"data/{f.name}" if f.suffix == ".parquet" else f.name), f.read_bytes())
    return flat
