"""The distilled tagger (annotate/distilled.py, annotate/student.py): training, save / load, applying the
student with the real packaged MiniLM, the confidence threshold, precedence, the out-of-fold evaluation,
and the student inside Ray Data and inside the whole annotate stage on a real local Ray."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from annotate_corpus import base_config, make_rows, write_normalized
from treasure import storage
from treasure.annotate import distilled
from treasure.annotate.config import AnnotateConfig
from treasure.annotate.distilled import (
    Example,
    Student,
    cross_validate,
    fit_student,
    fit_temperature,
    student_candidates,
    teacher_candidates,
    teacher_labels,
)
from treasure.annotate.merge import merge
from treasure.annotate.stage import run

# A separable toy set of real prompts: programming requests (Code / CodeGeneration) and cooking or
# music requests (Culture / CreativeWriting). Train and test share no prompt.
LANGS = ["Python", "JavaScript", "Rust", "Go", "Java", "C++"]
JOBS = ["reverses a linked list", "parses a CSV file", "sorts an array of integers", "computes a SHA-256 hash",
        "opens a TCP socket", "reads a JSON config"]
DISHES = ["lasagna", "a lemon tart", "ramen", "paella", "banana bread", "a curry"]
ARTS = ["a poem about autumn", "a short story about a dragon", "song lyrics about the sea",
        "a haiku about rain", "a limerick about a cat", "a fairy tale about a fox"]


def toy_examples() -> tuple[list[Example], list[Example]]:
    code = [f"Write a {lang} function that {job}." for lang in LANGS for job in JOBS]
    culture = [f"Give me a recipe for {d} and then write {a}." for d in DISHES for a in ARTS]
    def ex(text, domain, task):
        return Example(text, {"domain": domain, "task": task}, {"domain": "metadata", "task": "metadata"})
    rows = [ex(t, "Code", "CodeGeneration") for t in code] + [ex(t, "Culture", "CreativeWriting") for t in culture]
    test = [r for i, r in enumerate(rows) if i % 4 == 0]
    train = [r for i, r in enumerate(rows) if i % 4 != 0]
    return train, test


@pytest.fixture(scope="module")
def encoder():
    from treasure.models.sentence_encoder import SentenceEncoder

    return SentenceEncoder("packaged:minilm", max_tokens=64)


def test_encoder_gives_unit_vectors_that_tell_topics_apart(encoder):
    X = encoder.encode(["Write a Python function that sorts a list.", "Write a Rust function that sorts a vector.",
                        "Give me a recipe for pancakes."])
    assert X.shape == (3, 384) and np.allclose(np.linalg.norm(X, axis=1), 1.0, atol=1e-3)
    assert X[0] @ X[1] > X[0] @ X[2] + 0.2  # two coding prompts are closer than coding vs cooking
    assert encoder.encode([]).shape == (0, 384)


def test_all_layers_pools_every_hidden_state_and_ends_with_the_sentence_embedding(encoder):
    from treasure.models.sentence_encoder import SentenceEncoder

    texts = ["Summarize this article in two sentences.", "Write a haiku about the sea."]
    deep = SentenceEncoder("packaged:minilm", max_tokens=64, layers="all")
    X = deep.encode(texts)
    assert deep.layers == list(range(7)) and X.shape == (2, 384 * 7)
    blocks = X.reshape(2, 7, 384)
    assert np.allclose(np.linalg.norm(blocks, axis=2), 1.0, atol=1e-3)  # each layer's mean is a unit vector
    assert np.allclose(blocks[:, -1], encoder.encode(texts), atol=1e-5)  # the last block is the sentence embedding
    assert not np.allclose(blocks[:, 0], blocks[:, -1], atol=0.05)  # the input embeddings are another view
    assert deep.describe()["layers"] == list(range(7)) and deep.describe()["dim"] == 384 * 7
    low = SentenceEncoder("packaged:minilm", max_tokens=64, layers=[0, 1, 2, 3])
    assert len(low.net.encoder.layer) == 3  # the layers above the highest one read are not run
    assert np.allclose(low.encode(texts), X[:, :384 * 4], atol=1e-5)  # and the ones read are unchanged


def test_a_student_is_only_applied_to_the_features_it_was_trained_on(encoder):
    from treasure.annotate.student import check_student_encoder
    from treasure.models.sentence_encoder import SentenceEncoder

    train, _ = toy_examples()
    student = fit_student(encoder.encode([e.text for e in train]), train, ["domain"], holdout=0.25, encoder=encoder.describe())
    check_student_encoder(student, encoder)  # the same features: accepted
    with pytest.raises(ValueError, match=r"layers: student \[6\], tagger \[0, 1, 2, 3, 4, 5, 6\].*retrain"):
        check_student_encoder(student, SentenceEncoder("packaged:minilm", max_tokens=64, layers="all"))
    with pytest.raises(ValueError, match=r"max_tokens: student 64, tagger 32"):
        check_student_encoder(student, SentenceEncoder("packaged:minilm", max_tokens=32))
    with pytest.raises(ValueError, match=r"layers \[9\]: this encoder has hidden states 0..6"):
        SentenceEncoder("packaged:minilm", layers=[9])


def test_student_trains_saves_loads_and_beats_chance_on_unseen_prompts(encoder):
    train, test = toy_examples()
    X = encoder.encode([e.text for e in train])
    student = fit_student(X, train, ["domain", "task"], holdout=0.25, encoder={"model": "packaged:minilm"})
    assert set(student.heads) == {"domain", "task"} and student.heads["domain"].stats["agreement"] >= 0.9

    loaded = Student.from_files(student.to_files())  # JSON + npz, no pickle
    Xt = encoder.encode([e.text for e in test])
    for cat in ("domain", "task"):
        best, conf = loaded.heads[cat].predict(Xt)
        assert np.array_equal(best, student.heads[cat].predict(Xt)[0]) and np.all((conf > 0) & (conf <= 1))
        acc = np.mean([loaded.heads[cat].labels[b] == e.labels[cat] for b, e in zip(best, test)])
        assert acc >= 0.8, (cat, acc)  # chance is 0.5


def test_mlp_head_round_trip():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, 8)).astype(np.float32)
    ex = [Example(f"p{i}", {"domain": "Code" if x[0] + x[1] > 0 else "Math"}, {"domain": "metadata"}) for i, x in enumerate(X)]
    student = fit_student(X, ex, ["domain"], hidden=16, holdout=0.0)
    loaded = Student.from_files(student.to_files())
    assert np.allclose(loaded.heads["domain"].proba(X), student.heads["domain"].proba(X), atol=1e-6)
    assert np.mean(np.array(loaded.heads["domain"].labels)[loaded.heads["domain"].predict(X)[0]]
                   == [e.labels["domain"] for e in ex]) >= 0.9


def test_a_category_with_one_teacher_class_gets_no_head_and_says_so():
    X = np.eye(4, dtype=np.float32)
    ex = [Example(f"p{i}", {"domain": "Code" if i < 2 else "Math", "task": "Reasoning"}, {"domain": "metadata", "task": "metadata"})
          for i in range(4)]
    student = fit_student(X, ex, ["domain", "task"], holdout=0.0)
    assert set(student.heads) == {"domain"} and "no head" in student.info["skipped"]["task"]
    [[cand]] = student_candidates(student, X[:1], [["task"]], {"task": ("Reasoning", "OpenEnded")}, 0.0)
    assert cand.value is None and cand.provenance["by"] == "distilled" and "no student head" in cand.provenance["note"]


def test_source_weights_let_a_few_hand_labels_outweigh_many_metadata_labels():
    # Three one-hot prompts groups: A (metadata: Math), B (metadata: Code), and C, which metadata calls Math
    # on 10 rows and the hand-labelled file calls Code on 3. The head answers C by the weighted majority there.
    X = np.repeat(np.eye(3, dtype=np.float32), [10, 10, 13], axis=0)
    labels = ["Math"] * 10 + ["Code"] * 10 + ["Math"] * 10 + ["Code"] * 3
    by = ["metadata"] * 30 + ["file"] * 3
    ex = [Example(f"p{i}", {"domain": v}, {"domain": b}) for i, (v, b) in enumerate(zip(labels, by))]
    answer_at_c = {}
    for weights in (None, {"file": 1.0}, {"file": 10.0}):
        head = fit_student(X, ex, ["domain"], holdout=0.0, source_weights=weights).heads["domain"]
        answer_at_c[str(weights)] = head.labels[head.predict(X[-1:])[0][0]]
        assert head.labels[head.predict(X[:1])[0][0]] == "Math" and head.labels[head.predict(X[10:11])[0][0]] == "Code"
    assert answer_at_c == {"None": "Math", "{'file': 1.0}": "Math", "{'file': 10.0}": "Code"}
    with pytest.raises(ValueError, match="positive and finite"):
        AnnotateConfig.model_validate({**base_config("in", "out"), "tagger": {"engine": "distilled", "distilled": {
            "teacher": {"source_weights": {"file": 0}}}}})


def test_temperature_softens_an_overconfident_head():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 400)
    logits = np.stack([np.where(y == 0, 8.0, -8.0), np.where(y == 0, -8.0, 8.0)], axis=1)
    flip = rng.random(400) < 0.2  # 20% of the confident answers are wrong
    logits[flip] *= -1
    assert fit_temperature(logits, y) > 3.0


def two_class_student(conf_gap: float) -> tuple[Student, np.ndarray]:
    """A fixed head whose first row is answered Code with a chosen confidence."""
    from treasure.annotate.distilled import Head

    heads = {c: Head(c, labels, {"W0": np.array([[conf_gap], [0.0]], dtype=np.float32), "b0": np.zeros(2, np.float32)})
             for c, labels in (("domain", ["Code", "Math"]), ("task", ["CodeGeneration", "Reasoning"]))}
    return Student({"model": "packaged:minilm"}, heads), np.array([[1.0]], dtype=np.float32)


def test_confidence_threshold_makes_unspecified_with_distilled_provenance(taxonomy):
    allowed = {c: tuple(taxonomy.category(c).allowed) for c in ("domain", "task")}
    student, X = two_class_student(0.4)  # p(Code) = sigmoid(0.4) = 0.599
    [[dom, task]] = student_candidates(student, X, [["domain", "task"]], allowed, min_confidence=0.7, version="v")
    assert dom.value == "Unspecified"  # domain has the value
    assert dom.provenance == {"by": "distilled", "model": "packaged:minilm", "version": "v", "confidence": 0.5987,
                              "raw": "Code", "note": "unspecified: confidence below 0.7"}
    assert task.value is None and task.provenance["raw"] == "CodeGeneration"  # task has no Unspecified: no marker
    markers, prov = merge([dom, task], {"default": ["metadata", "distilled"]}, taxonomy)
    assert markers == {"domain": "Unspecified"} and prov["task"]["note"].startswith("unspecified: confidence below")

    [[dom, task]] = student_candidates(student, X, [["domain", "task"]], allowed, min_confidence=0.5)
    assert (dom.value, task.value) == ("Code", "CodeGeneration") and "note" not in dom.provenance


def test_teacher_wins_where_both_exist_and_precedence_is_configurable(taxonomy):
    allowed = {"domain": tuple(taxonomy.category("domain").allowed)}
    student, X = two_class_student(3.0)
    [[guess]] = student_candidates(student, X, [["domain"]], allowed, 0.5)
    meta_cands = [guess, merge_candidate("domain", "Math", "metadata")]
    default = AnnotateConfig(input="a", output="b").precedence
    assert merge(meta_cands, default, taxonomy)[0] == {"domain": "Math"}  # the teacher (metadata) wins
    assert merge(meta_cands, {"default": ["distilled", "metadata"]}, taxonomy)[0] == {"domain": "Code"}
    # The hand-labelled file's own label for the same prompt wins over the student, too.
    labels = teacher_labels([Example("Is 7 prime?", {"domain": "Math"}, {"domain": "file"})], {"file": {"version": "labels.jsonl"}})
    known = {r["key"]: r["labels"] for r in map(json.loads, labels.splitlines())}
    [[from_file]] = teacher_candidates(known, ["Is  7 prime? "], [["domain"]])
    assert merge([guess, from_file], default, taxonomy)[0] == {"domain": "Math"}
    assert merge([guess, from_file], default, taxonomy)[1]["domain"]["by"] == "file"
    with pytest.raises(ValueError, match="must list 'distilled'"):
        AnnotateConfig(input="a", output="b", tagger={"engine": "distilled"}, precedence={"default": ["metadata", "rule"]})


def merge_candidate(cat, value, by):
    from treasure.annotate.merge import Candidate, prov

    return Candidate(cat, value, prov(by))


def test_cross_validation_never_trains_on_the_prompts_it_scores(monkeypatch):
    rng = np.random.default_rng(2)
    X = rng.normal(size=(40, 4)).astype(np.float32)
    ex = [Example(f"p{i}", {"domain": "Code" if x[0] > 0 else "Math"}, {"domain": "file"}) for i, x in enumerate(X)]
    seen = []
    real = distilled.fit_student

    def spy(Xs, examples, *a, **k):
        seen.append({e.text for e in examples})
        return real(Xs, examples, *a, **k)

    monkeypatch.setattr(distilled, "fit_student", spy)
    res = cross_validate(X, ex, X, ex, ["domain"], folds=4, holdout=0.0)
    assert len(seen) == 4 and all(len(s) < 40 for s in seen)
    assert set().union(*[set(e.text for e in ex) - s for s in seen]) == {e.text for e in ex}  # each prompt scored once, unseen
    r = res["domain"]["argmax"]
    assert r["n"] == 40 and r["accuracy"] >= 0.8 and r["ci95"][0] < r["accuracy"] < r["ci95"][1]
    assert r["majority_accuracy"] == max(sum(e.labels["domain"] == v for e in ex) for v in ("Code", "Math")) / 40


def test_distilled_tagger_actor_applies_the_student_in_ray_data(tmp_path, ray_local, encoder):
    import ray

    from treasure.annotate.student import STUDENT_FILES, DistilledTagger, student_dir

    train, test = toy_examples()
    student = fit_student(encoder.encode([e.text for e in train]), train, ["domain", "task"], holdout=0.25,
                          encoder={"model": "packaged:minilm"})
    labels = str(tmp_path / "labels.jsonl")
    cfg = AnnotateConfig.model_validate(base_config("in", str(tmp_path / "out"), tagger={
        "engine": "distilled", "categories": ["domain", "task"], "min_confidence": 0.0, "pool": {"count": 1, "num_cpus": 0.5},
        "distilled": {"teacher": {"sources": ["metadata", "file"], "file": labels}}}))
    files = student.to_files()
    files["teacher_labels.jsonl"] = teacher_labels([Example(test[0].text, {"domain": "Math"}, {"domain": "file"})],
                                                   {"file": {"version": labels}}).encode()
    for name in STUDENT_FILES:
        storage.write_bytes(storage.join(student_dir(cfg), name), files[name])
    batch = pd.DataFrame({"id": [f"r{i}" for i in range(len(test))], "prompt": [e.text for e in test],
                          "_cands": ["[]"] * len(test), "_to_tag": [json.dumps(["domain", "task"])] * len(test),
                          "_error": [None] * len(test), "_error_stage": [None] * len(test)})
    batch.loc[1, "_to_tag"] = "[]"  # a row metadata already settled: passed through untouched
    out = ray.data.from_pandas(batch).map_batches(
        DistilledTagger, fn_constructor_kwargs={"config": cfg.model_dump(mode="json")}, batch_size=8,
        batch_format="pandas", concurrency=1, num_cpus=0.5).to_pandas().sort_values("id", key=lambda s: s.str[1:].astype(int))
    cands = [json.loads(c) for c in out["_cands"]]
    assert cands[1] == []
    assert ["domain", "Math", {"by": "file", "model": None, "version": labels, "confidence": None, "raw": None}] in cands[0]
    right = 0
    for c, e in zip(cands, test):
        for cat, value, p in c:
            if p["by"] == "distilled":
                assert p["version"] == "packaged:minilm/linear" and 0 < p["confidence"] <= 1
                right += value == e.labels[cat]
    assert right >= 0.8 * 2 * (len(test) - 1)


@pytest.mark.slow  # a whole annotate stage run with the student's training task: ~1-2 min on 2 busy cores
def test_annotate_stage_with_the_distilled_tagger(tmp_path, ray_local, annotate_mlflow):
    rows = make_rows(30, bad=False)
    src = write_normalized(str(tmp_path / "normalized"), rows)
    hand = tmp_path / "hand.jsonl"
    hand.write_text("\n".join(json.dumps({"prompt": p, "domain": d, "task": t}) for p, d, t in [
        ("解释为什么天空是蓝色的。 (#3)", "Sciences", "Explanation"),
        ("What is the boiling point of water?", "Sciences", "QuestionAnswering"),
        ("Explain photosynthesis briefly.", "Sciences", "Explanation")]) + "\n", encoding="utf-8")
    cfg = AnnotateConfig.model_validate(base_config(src, str(tmp_path / "annotated"), tagger={
        "engine": "distilled", "categories": ["domain", "task"], "min_confidence": 0.3, "batch_size": 16,
        "pool": {"count": 1, "num_cpus": 0.5},
        "distilled": {"teacher": {"sources": ["file", "metadata"], "file": str(hand), "holdout": 0.2},
                      "eval_file": str(hand), "eval_folds": 3}}))
    summary = run(cfg)
    assert summary["metrics"]["rows"] == 30
    report = json.loads(storage.read_bytes(storage.join(cfg.output, "report/marker_report.json")))
    t = report["tagger"]["categories"]
    assert t["domain"]["not_tagged"] == 0 and t["task"]["not_tagged"] == 0
    assert t["domain"]["teacher_coverage"] + t["domain"]["student_share"] == pytest.approx(1.0)
    assert "hand_accuracy" in t["domain"] and "Distilled tagger" in storage.read_bytes(
        storage.join(cfg.output, "report/marker_report.md")).decode()
    info = json.loads(storage.read_bytes(storage.join(cfg.output, "student/student.json")))
    assert info["info"]["lineage"]["input_manifest_id"] == storage.read_manifest(src)["manifest_id"]
    data = pd.concat([pd.read_parquet(p) for p in sorted((tmp_path / "annotated" / "data").glob("*.parquet"))])
    prov = {r["id"]: json.loads(r["provenance"]) for r in data.to_dict("records")}
    assert prov["alpaca-zh:0000000000000003"]["domain"]["by"] == "file"  # the hand label of this very prompt
    assert prov["mathematics:0000000000000001"]["domain"]["by"] == "metadata"
    assert prov["alpaca-zh:0000000000000008"]["domain"]["by"] == "distilled"


class StubTeacher:
    """An OpenAI-compatible chat endpoint on 127.0.0.1 that answers the tagger prompt like a (scripted) LLM:
    the row's text decides the class; a text with 'riddle' gets prose, which is no label."""

    def __init__(self):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        seen = self.seen = []

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                seen.append({"auth": self.headers.get("Authorization"), "body": body})
                user = body["messages"][-1]["content"]
                row = user.rsplit("Text: ", 1)[1]
                code = "function" in row
                if "riddle" in row:
                    answer = "Well, that depends on many things."
                elif "Classify the domain" in user:
                    answer = "Code" if code else "Culture"
                else:
                    answer = "CodeGeneration" if code else "CreativeWriting"
                data = json.dumps({"choices": [{"message": {"role": "assistant", "content": answer}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/chat/completions"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.mark.slow  # ~30 s on 2 busy cores: ray.data.llm's HTTP processor actors start
def test_llm_teacher_labels_a_sample_through_ray_data_llm_http(tmp_path, ray_local, monkeypatch):
    from treasure.annotate.student import llm_examples

    stub = StubTeacher()
    monkeypatch.setenv("TEST_TEACHER_KEY", "sk-test")
    cfg = AnnotateConfig.model_validate(base_config("in", str(tmp_path / "out"), tagger={
        "engine": "distilled", "categories": ["domain", "task"],
        "distilled": {"teacher": {"sources": ["llm"], "llm": {"url": stub.url, "model": "stub-teacher",
                                                               "api_key_env": "TEST_TEACHER_KEY", "concurrency": 1}}}}))
    texts = ["Write a Go function that adds two numbers.", "Give me a recipe for soup.", "Tell me a riddle."]
    try:
        examples = llm_examples(cfg, texts)
    finally:
        stub.server.shutdown()
    assert [(e.text, e.labels, e.by) for e in examples] == [
        (texts[0], {"domain": "Code", "task": "CodeGeneration"}, {"domain": "llm", "task": "llm"}),
        (texts[1], {"domain": "Culture", "task": "CreativeWriting"}, {"domain": "llm", "task": "llm"})]
    assert len(stub.seen) == 6 and {s["auth"] for s in stub.seen} == {"Bearer sk-test"}
    assert {s["body"]["model"] for s in stub.seen} == {"stub-teacher"}


@pytest.mark.slow  # a whole annotate stage run with an LLM teacher behind a local OpenAI-compatible stub: ~30 s
def test_annotate_stage_with_an_llm_teacher(tmp_path, ray_local, annotate_mlflow):
    rows = make_rows(30, bad=False)
    src = write_normalized(str(tmp_path / "normalized"), rows)
    stub = StubTeacher()
    cfg = AnnotateConfig.model_validate(base_config(src, str(tmp_path / "annotated"), tagger={
        "engine": "distilled", "categories": ["domain", "task"], "min_confidence": 0.0, "pool": {"count": 1, "num_cpus": 0.5},
        "distilled": {"teacher": {"sources": ["llm", "metadata"], "holdout": 0.0,
                                  "llm": {"url": stub.url, "model": "stub-teacher", "max_rows": 6, "concurrency": 1}}}}))
    try:
        run(cfg)
    finally:
        stub.server.shutdown()
    assert len(stub.seen) == 12  # 6 sampled prompts x (domain, task)
    info = json.loads(storage.read_bytes(storage.join(cfg.output, "student/student.json")))
    assert info["info"]["lineage"]["teacher_counts"]["llm"] == 6
    data = pd.concat([pd.read_parquet(p) for p in sorted((tmp_path / "annotated" / "data").glob("*.parquet"))])
    by = [json.loads(p)["task"]["by"] for p in data["provenance"]]
    asked = {s["body"]["messages"][-1]["content"].rsplit("Text: ", 1)[1].split("\n")[0] for s in stub.seen}
    for row, who in zip(data.to_dict("records"), by):
        if row["source"] in ("chitchat", "mathematics"):
            assert who == "metadata"
        else:  # no task from metadata: the LLM's own label where it labelled this prompt, else the student
            assert who == ("llm" if row["prompt"] in asked else "distilled"), (row["prompt"], who)
    assert "llm" in by and "distilled" in by
