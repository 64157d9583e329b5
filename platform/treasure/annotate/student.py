"""The distilled tagger's Ray shell: teacher labels (Ray tasks over the shards), the student's training (a Ray
task), its files (saved with the annotated dataset's lineage, logged to MLflow) and the actor that applies
it to every row in the annotate stage's Ray Data pipeline. The pure part is annotate/distilled.py.

    uri = prepare_student(cfg, plan, attempt)     # before the shards run; reused by a resumed attempt
    ds.map_batches(DistilledTagger, fn_constructor_kwargs={"config": config}, ...)   # annotate/stage.py

The student lives in the stage's scratch (``<output>/_staging/<config key>/student/``), so every
attempt of one config applies the same student; publish copies it to ``<output>/student/``.
"""

from __future__ import annotations

import json
import time

from treasure import storage
from treasure.annotate.annotators import candidates_from_json, candidates_to_json, tag_priority
from treasure.annotate.config import AnnotateConfig, DistilledConfig
from treasure.annotate.distilled import (
    Student,
    cross_validate,
    fit_student,
    merge_examples,
    metadata_examples,
    read_label_file,
    student_candidates,
    student_text,
    teacher_candidates,
    teacher_labels,
    text_key,
)
from treasure.stage import STAGING, key_hash

STUDENT_FILES = ("student.json", "heads.npz", "teacher_labels.jsonl")  # student.json is written last: it marks completion


def student_dir(cfg: AnnotateConfig) -> str:
    """Where the student of this config is kept while the stage runs (the contract's scratch, keyed by config)."""
    return storage.join(cfg.output, STAGING, key_hash(cfg), "student")


def student_encoder(d: DistilledConfig):
    """The sentence encoder a `DistilledConfig` names (one place, so training, applying and the benchmarks
    compute the same features)."""
    from treasure.models.sentence_encoder import SentenceEncoder

    return SentenceEncoder(d.encoder, d.max_tokens, d.dtype, d.encode_batch_size, d.layers)


def check_student_encoder(student: Student, encoder) -> None:
    """A student reads the features it was trained on: same encoder, truncation and pooled layers, else a clear error."""
    got = encoder.describe()
    # Students saved before `layers` existed pooled the last layer only.
    want = {"layers": [encoder.n_layers], **student.encoder}
    # dtype may differ (bf16 and float32 features are interchangeable); a key the student did not record is not checked.
    diff = {k: (want[k], got[k]) for k in got if k != "dtype" and k in want and want[k] != got[k]}
    if diff:
        raise ValueError("the distilled student was trained on other encoder features than this tagger computes "
                         f"({', '.join(f'{k}: student {a!r}, tagger {b!r}' for k, (a, b) in diff.items())}); "
                         "retrain it with this config")


def load_student(uri: str) -> Student:
    return Student.from_files({name: storage.read_bytes(storage.join(uri, name)) for name in ("student.json", "heads.npz")})


def load_teacher_labels(uri: str) -> dict[str, dict[str, list]]:
    """{prompt key: {category: [value, provenance]}} of the teacher's non-metadata labels (none if the file is absent)."""
    path = storage.join(uri, "teacher_labels.jsonl")
    if not storage.exists(path):
        return {}
    return {r["key"]: r["labels"] for r in map(json.loads, storage.read_bytes(path).decode("utf-8").splitlines())}


def shard_examples(spec: dict, *, config: dict) -> dict:
    """Ray task body, one shard: the metadata teacher's examples, and the shard's first prompts in the LLM
    teacher's seeded order (no more than it can take, so the driver never holds a corpus's prompts)."""
    from treasure.annotate.workers import read_rows

    cfg = AnnotateConfig.model_validate(config)
    t = cfg.tagger.distilled.teacher
    rows = read_rows(spec["file"], spec["start"], spec["stop"])
    out = {"metadata": metadata_examples(rows, cfg.metadata, cfg.tagger.categories) if "metadata" in t.sources else [],
           "llm": []}
    if t.llm is not None:
        texts = {text_key(p): p for p in (r.get("prompt") for r in rows) if isinstance(p, str) and p.strip()}
        out["llm"] = sorted(((tag_priority(cfg.seed, k), p) for k, p in texts.items()))[:t.llm.max_rows]
    return out


def teacher_examples(cfg: AnnotateConfig, specs: list[dict]) -> tuple[list, dict]:
    """(examples, counts): the configured teacher sources merged, one example per prompt, metadata capped."""
    import ray

    t = cfg.tagger.distilled.teacher
    by_source: dict[str, list] = {}
    if "metadata" in t.sources or "llm" in t.sources:
        task = ray.remote(shard_examples).options(**cfg.rules.pool.ray_options())
        parts = ray.get([task.remote(s, config=cfg.model_dump(mode="json")) for s in specs])
    if "metadata" in t.sources:
        found = merge_examples([e for part in parts for e in part["metadata"]])
        found.sort(key=lambda e: tag_priority(cfg.seed, text_key(e.text)))  # a seeded sample when capped
        by_source["metadata"] = found[:t.max_rows]
    if "llm" in t.sources:
        sample = sorted({p for part in parts for p in part["llm"]})[:t.llm.max_rows]
        by_source["llm"] = llm_examples(cfg, [text for _, text in sample])
    if "file" in t.sources:
        by_source["file"] = read_label_file(storage.read_bytes(t.file).decode("utf-8"), cfg.tagger.categories)
    examples = merge_examples(*[by_source[s] for s in t.sources])
    return examples, {s: len(v) for s, v in by_source.items()}


def llm_examples(cfg: AnnotateConfig, texts: list[str]) -> list:
    """The LLM teacher's labels for `texts`: one chat request per prompt and category through `ray.data.llm`'s HTTP
    request processor; an answer off the class list (or a failed request) gives no label, and is counted."""
    import os

    import ray
    from ray.data.llm import HttpRequestProcessorConfig, build_processor

    from treasure.annotate.distilled import Example
    from treasure.annotate.tagger import build_prompt, parse_answer, row_text
    from treasure.annotate.workers import cached_taxonomy

    t, llm = cfg.tagger, cfg.tagger.distilled.teacher.llm
    taxonomy = cached_taxonomy(cfg.taxonomy)
    prompts = {c: build_prompt(taxonomy, c, t.prompt_version, definitions=t.definitions, few_shot=t.few_shot) for c in t.categories}
    requests = [{"i": i, "category": c, "messages": json.dumps(p.messages(row_text(p, {"prompt": text}, t.max_prompt_chars)))}
                for i, text in enumerate(texts) for c, p in prompts.items()]
    if not requests:
        return []
    key = os.environ.get(llm.api_key_env) if llm.api_key_env else None
    if llm.api_key_env and not key:
        raise RuntimeError(f"tagger.distilled.teacher.llm.api_key_env: ${llm.api_key_env} is not set on the driver")
    processor = build_processor(
        HttpRequestProcessorConfig(url=llm.url, headers={"Authorization": f"Bearer {key}"} if key else {},
                                   qps=llm.qps, max_retries=llm.max_retries, concurrency=llm.concurrency),
        preprocess=lambda r: {"i": r["i"], "category": r["category"],
                              "payload": {"model": llm.model, "messages": json.loads(r["messages"]), "temperature": 0,
                                          "max_tokens": t.max_new_tokens}},
        postprocess=lambda r: {"i": r["i"], "category": r["category"],
                               "raw": ((r.get("http_response") or {}).get("choices") or [{}])[0].get("message", {}).get("content") or ""},
    )
    labels: dict[int, dict[str, str]] = {}
    off_list = 0
    for row in processor(ray.data.from_items(requests)).take_all():
        value, on_list = parse_answer(row["raw"], prompts[row["category"]].labels)
        if value is None:
            off_list += 1
            continue
        labels.setdefault(int(row["i"]), {})[row["category"]] = value
    print(f"annotate: LLM teacher {llm.model}: {len(requests)} requests, {off_list} answers without a label", flush=True)
    return [Example(texts[i], lab, {c: "llm" for c in lab}) for i, lab in sorted(labels.items())]


def train_student(examples: list, eval_examples: list | None, config: dict, lineage: dict) -> dict[str, bytes]:
    """Ray task body: embed the teacher's prompts, fit the heads, score on the hand-labelled set; the student's files."""
    import torch

    cfg = AnnotateConfig.model_validate(config)
    d, t = cfg.tagger.distilled, cfg.tagger
    torch.set_num_threads(max(1, int(t.pool.num_cpus)))
    t0 = time.monotonic()
    enc = student_encoder(d)
    X = enc.encode([student_text({"prompt": e.text}, t.max_prompt_chars) for e in examples])
    fit = {"hidden": d.hidden, "l2": d.l2, "balanced": d.class_weight == "balanced",
           "source_weights": dict(d.teacher.source_weights)}
    student = fit_student(X, examples, t.categories, holdout=d.teacher.holdout, seed=cfg.seed,
                          encoder=enc.describe(), **fit)
    evaluation = None
    if eval_examples:
        X_eval = enc.encode([student_text({"prompt": e.text}, t.max_prompt_chars) for e in eval_examples])
        evaluation = {"file": d.eval_file, "method": f"{d.eval_folds}-fold cross-validation (out-of-fold predictions)",
                      "categories": cross_validate(X, examples, X_eval, eval_examples, t.categories, folds=d.eval_folds,
                                                   min_confidence=t.min_confidence, seed=cfg.seed, **fit)}
    student.info.update({"lineage": lineage, "teacher": {"sources": d.teacher.sources, "file": d.teacher.file,
                                                          "source_weights": dict(d.teacher.source_weights),
                                                          "examples": len(examples)},
                         "evaluation": evaluation, "train_seconds": round(time.monotonic() - t0, 1),
                         "config": d.model_dump(mode="json")})
    return student.to_files()


def prepare_student(cfg: AnnotateConfig, plan, attempt) -> str:
    """Train the student once per config (a resumed attempt reuses it), publish a copy with the dataset, log it."""
    import mlflow
    import ray

    where = student_dir(cfg)
    if not storage.exists(storage.join(where, "student.json")):
        d = cfg.tagger.distilled
        examples, counts = teacher_examples(cfg, plan.state["specs"])
        eval_examples = read_label_file(storage.read_bytes(d.eval_file).decode("utf-8"), cfg.tagger.categories) if d.eval_file else None
        lineage = {**plan.lineage, "taxonomy_version": plan.taxonomy.version, "teacher_counts": counts,
                   "mlflow_run_id": attempt.run_id}
        print(f"annotate: training the distilled tagger on {len(examples)} teacher prompts ({counts})", flush=True)
        task = ray.remote(train_student).options(**cfg.tagger.pool.ray_options())
        files = ray.get(task.remote(examples, eval_examples, cfg.model_dump(mode="json"), lineage))
        t = d.teacher
        files["teacher_labels.jsonl"] = teacher_labels(examples, {
            "file": {"version": t.file}, "llm": {"model": t.llm.model if t.llm else None, "version": "teacher"}}).encode()
        for name in STUDENT_FILES[::-1]:  # heads first, student.json last: it marks the student complete
            storage.write_bytes(storage.join(where, name), files[name])
    files = {name: storage.read_bytes(storage.join(where, name)) for name in STUDENT_FILES}
    for name, blob in files.items():
        storage.write_bytes(attempt.path(f"student/{name}"), blob)
    info = json.loads(files["student.json"])
    mlflow.log_text(files["student.json"].decode(), "student/student.json")
    mlflow.log_metrics(student_metrics(info))
    return where


def student_metrics(info: dict) -> dict[str, float]:
    """MLflow metrics of a student: held-out agreement and hand-set accuracy per category."""
    out = {}
    for cat, h in info["heads"].items():
        out[f"student_{cat}_teacher_rows"] = float(h["stats"]["teacher_rows"])
        if "agreement" in h["stats"]:
            out[f"student_{cat}_agreement"] = float(h["stats"]["agreement"])
    for cat, r in ((info["info"].get("evaluation") or {}).get("categories") or {}).items():
        out[f"student_{cat}_hand_accuracy"] = float(r["argmax"]["accuracy"])
    return out


class DistilledTagger:
    """Actor: the student over the rows left open for the tagger (one embedding per row, a head per category)."""

    def __init__(self, config: dict):
        import torch

        from treasure.annotate.workers import cached_taxonomy

        self.cfg = AnnotateConfig.model_validate(config)
        t, d = self.cfg.tagger, self.cfg.tagger.distilled
        torch.set_num_threads(max(1, int(t.pool.num_cpus)))
        self.student = load_student(student_dir(self.cfg))
        self.encoder = student_encoder(d)
        check_student_encoder(self.student, self.encoder)
        taxonomy = cached_taxonomy(self.cfg.taxonomy)
        self.allowed = {c: tuple(taxonomy.category(c).allowed) for c in t.categories}
        self.version = f"{d.encoder}/{'linear' if not d.hidden else f'mlp{d.hidden}'}"
        self.teacher = load_teacher_labels(student_dir(self.cfg))  # the label file's and the LLM's own labels

    def __call__(self, batch):
        from treasure.annotate.workers import error_state, rows_to_tag

        t = self.cfg.tagger
        cands = list(batch["_cands"])
        errors, stages = error_state(batch)
        todo = list(rows_to_tag(batch, errors))
        if not todo:
            return batch
        texts = [str(row.get("prompt") or "") for _, row, _ in todo]
        asks = [cats for _, _, cats in todo]
        try:
            X = self.encoder.encode([student_text({"prompt": x}, t.max_prompt_chars) for x in texts])
        except Exception as e:  # an encoder failure is a per-batch outcome: its rows go to the errors table
            for i, _, _ in todo:
                errors[i], stages[i] = f"tagger error: {type(e).__name__}: {e}", "tagger"
            return batch.assign(_error=errors, _error_stage=stages)
        by_teacher = teacher_candidates(self.teacher, texts, asks)
        by_student = student_candidates(self.student, X, asks, self.allowed, t.min_confidence, self.version)
        for (i, _, _), f, s in zip(todo, by_teacher, by_student):
            cands[i] = candidates_to_json(candidates_from_json(cands[i]) + f + s)
        return batch.assign(_cands=cands, _error=errors, _error_stage=stages)

