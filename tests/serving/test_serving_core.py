"""ModelServer without Ray: loading from an MLflow registered model, batching by sampling params,
and the health check that must fail when the engine is broken (and recover when it is not)."""

from __future__ import annotations

import pytest

from treasure.serving.api_models import GenerateRequest
from treasure.serving.config import ServeConfig
from treasure.serving.server import ModelServer


@pytest.fixture(scope="module")
def server(tiny_checkpoint):
    return ModelServer(ServeConfig(checkpoint=str(tiny_checkpoint), engine="transformers", max_tokens_limit=16, default_max_tokens=4))


def test_loads_a_registered_mlflow_model(tmp_path, tiny_checkpoint, taxonomy, monkeypatch):
    import mlflow
    from mlflow import MlflowClient

    from treasure.models.mlflow_model import log_model

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    exp = mlflow.create_experiment("serve-test", artifact_location=(tmp_path / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=exp) as run:
        pass
    source = log_model(run.info.run_id, tiny_checkpoint)  # as the train stage logs it: a pyfunc model
    client = MlflowClient()
    client.create_registered_model("tiny-marked")
    client.create_model_version("tiny-marked", source=source, run_id=run.info.run_id)

    srv = ModelServer(ServeConfig(checkpoint="models:/tiny-marked/1", engine="transformers", max_tokens_limit=8, default_max_tokens=4))
    assert srv.taxonomy.version == taxonomy.version and srv.model_name == "tiny-marked/1"
    p = srv.prepare_generate(GenerateRequest(prompt="hi", markers={"domain": "Legal"}))
    body = srv.response_for(p, srv.results_for(p, srv.generate_batch([p])[0]))
    assert body["markers"]["requested"] == {"domain": "Legal"}
    # usage counts every generated token (the block's too); the answer alone is held to max_tokens.
    assert body["usage"]["completion_tokens"] <= 4 + srv.block_tokens
    assert len(srv.engine.tokenizer(body["text"], add_special_tokens=False)["input_ids"]) <= 4


def test_missing_checkpoint_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match="models:/name/version"):
        ModelServer(ServeConfig(checkpoint="/nonexistent/ckpt"))


def test_batch_groups_by_sampling_params_and_keeps_order(server):
    reqs = [GenerateRequest(prompt=f"q{i}", max_tokens=3 + i % 2) for i in range(4)]
    prepared = [server.prepare_generate(r) for r in reqs]
    together = [gens[0] for gens in server.generate_batch(prepared)]
    alone = [server.generate_batch([p])[0][0] for p in prepared]
    assert [g.completion_tokens <= p.params.max_tokens for g, p in zip(together, prepared)] == [True] * 4
    assert [g.text for g in together] == [g.text for g in alone]  # greedy: batching does not change answers
    # The engine's budget is the answer's plus the block's own; the answer alone is held to max_tokens.
    assert [p.params.max_tokens - p.answer_tokens for p in prepared] == [server.block_tokens] * 4
    for p, g in zip(prepared, together):
        (result,) = server.results_for(p, [g])
        assert len(server.engine.tokenizer(result.text, add_special_tokens=False)["input_ids"]) <= p.answer_tokens


def test_health_check_fails_when_the_engine_breaks_and_recovers(server):
    server.check_health()  # healthy: no probe needed
    model = server.engine.model
    p = server.prepare_generate(GenerateRequest(prompt="hi"))
    try:
        server.engine.model = None  # the weights are gone: every generation now fails for real
        with pytest.raises(Exception):
            server.generate_batch([p])
        assert server.health.error is not None
        with pytest.raises(RuntimeError, match="engine is broken"):
            server.check_health()
    finally:
        server.engine.model = model
    server.check_health()  # the probe passes again and clears the recorded failure
    assert server.health.error is None and server.health.probes == 2


def test_a_request_that_breaks_its_batch_fails_alone(server, monkeypatch):
    """One poisoned request in a batch: the others are answered, it alone gets the engine's error."""
    real = server.engine.generate

    def generate(prompts, params, prefixes=None):  # fault injected at the engine call, for one input
        if any("POISON" in str(p) for p in prompts):
            raise RuntimeError("the engine choked on this input")
        return real(prompts, params, prefixes)

    monkeypatch.setattr(server.engine, "generate", generate)
    prepared = [server.prepare_generate(GenerateRequest(prompt=t, max_tokens=3)) for t in ("q0", "POISON", "q2")]
    out = server.generate_isolated(prepared)
    assert [type(o).__name__ for o in out] == ["list", "RuntimeError", "list"]
    assert [o[0].text for o in (out[0], out[2])] == [server.generate_batch([p])[0][0].text for p in (prepared[0], prepared[2])]
    with pytest.raises(RuntimeError, match="choked"):
        server.generate_isolated(prepared[1:2])  # alone, its failure is raised
    server.health.error = server.health.since = None


def test_stats_never_carry_exception_text(server):
    server._failed(RuntimeError("secret-ish detail /home/user/model.bin"))
    try:
        stats = server.stats()
        assert "detail" not in str(stats) and stats["engine_failed_since"] is not None
    finally:
        server.health.error = server.health.since = None


def test_taxonomy_body_lists_the_block_categories_of_a_block_taxonomy(tmp_path, tiny_checkpoint):
    """A taxonomy whose `block:` leaves categories out (the demo's) serves only the block's, in block order."""
    import json
    import shutil

    from treasure.taxonomy import load_taxonomy

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    spec = tmp_path / "short.yaml"
    spec.write_text("extends: paper\nblock: [language, length_bucket]\n")
    short = load_taxonomy(spec)
    (ckpt / "taxonomy.yaml").write_text(short.to_yaml())
    meta = json.loads((ckpt / "treasure.json").read_text())
    (ckpt / "treasure.json").write_text(json.dumps({**meta, "taxonomy_version": short.version}))  # checkpoint stays valid
    srv = ModelServer(ServeConfig(checkpoint=str(ckpt), engine="transformers", max_tokens_limit=8, default_max_tokens=2))
    body = srv.taxonomy_body()
    assert [c["name"] for c in body["categories"]] == ["language", "length_bucket"]
    assert body["categories"][1]["allowed"] == ["concise", "medium", "long"]


@pytest.mark.parametrize("requested", [{}, {"length_bucket": "medium"}])
def test_a_stream_cut_by_max_tokens_is_the_plain_answer(lessons_checkpoint, requested):
    """The transformers stream counts the model's own tokens: cut at any budget, the streamed answer is
    the plain one (the piece that closes the block must not swallow answer tokens uncounted)."""
    srv = ModelServer(ServeConfig(checkpoint=str(lessons_checkpoint), engine="transformers"))
    answers = []
    for max_tokens in (1, 2, 3, 5, 8, 13, 64):
        p = srv.prepare_generate(GenerateRequest(prompt="Why is the sky blue?", markers=requested, max_tokens=max_tokens))
        [plain] = srv.results_for(p, srv.generate_batch([p])[0])
        pieces = list(srv.stream(p))
        streamed, summary = "".join(d for d, s in pieces if s is None), pieces[-1][1]
        assert (streamed, summary["finish_reason"]) == (plain.text, plain.finish_reason), max_tokens
        answers.append(plain.text)
    assert answers[0] and len(answers[-1].split()) >= 5  # one token is visible; 64 tokens hold a multi-word answer
    assert len(set(answers)) >= 5  # the budgets really cut it at different places
