"""treasure.models.engine on the tiny random checkpoint: batching, determinism, stop strings, streaming."""

from __future__ import annotations

import importlib.util

import pytest

from treasure.models.engine import EngineConfig, SamplingParams, cut_at_stop, hold_back_stops, load_engine


@pytest.fixture(scope="module")
def engine(tiny_checkpoint):
    return load_engine(EngineConfig(model=str(tiny_checkpoint), batch_size=2))


def test_batched_greedy_equals_one_by_one(engine):
    turns = ["Hi", "Tell me a much longer story about a cat and a dog, please.", "2+2?"]
    params = SamplingParams(max_tokens=12)
    batched = engine.generate(turns, params)
    single = [engine.generate([t], params)[0] for t in turns]
    assert [g.text for g in batched] == [g.text for g in single]
    assert all(g.completion_tokens <= 12 for g in batched)
    assert all(g.prompt_tokens > 0 for g in batched)
    assert {g.finish_reason for g in batched} <= {"stop", "length"}


def test_sampling_is_deterministic_under_seed(engine):
    turns = ["Hi", "Bye"]
    a = engine.generate(turns, SamplingParams(max_tokens=10, temperature=1.0, seed=3))
    b = engine.generate(turns, SamplingParams(max_tokens=10, temperature=1.0, seed=3))
    c = engine.generate(turns, SamplingParams(max_tokens=10, temperature=1.0, seed=4))
    assert [g.text for g in a] == [g.text for g in b]
    assert [g.text for g in a] != [g.text for g in c]


def test_stream_concatenates_to_generate(engine):
    params = SamplingParams(max_tokens=10)
    assert "".join(engine.stream("Hi there", params)) == engine.generate(["Hi there"], params)[0].text


def test_prompt_too_long_is_a_row_outcome(tiny_checkpoint):
    eng = load_engine(EngineConfig(model=str(tiny_checkpoint), max_model_len=32))
    gens = eng.generate(["word " * 100, "Hi"], SamplingParams(max_tokens=4))
    assert gens[0].finish_reason == "prompt_too_long" and gens[0].text == ""
    assert gens[1].finish_reason in {"stop", "length"}


def test_stop_strings_cut_text():
    assert cut_at_stop("abc STOP def", ["STOP", "zz"]) == ("abc ", True)
    assert cut_at_stop("abc", ["x"]) == ("abc", False)
    assert list(hold_back_stops(iter(["ab", "c<", "/s>x"]), ["</s>"])) == ["ab", "c"]
    assert "".join(hold_back_stops(iter(["a<", "b", "c"]), ["</s>"])) == "a<bc"


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm installed")
def test_vllm_backend_without_vllm_says_what_to_install(tiny_checkpoint):
    with pytest.raises(ImportError, match="pip install vllm"):
        load_engine({"model": str(tiny_checkpoint), "backend": "vllm"})


def test_stream_reports_a_failing_generation_instead_of_hanging(engine):
    import time

    forward = engine.model.forward
    calls = []

    def breaks_on_the_fifth_step(*args, **kwargs):  # the weights are fine; the device "fails" mid-stream
        calls.append(1)
        if len(calls) >= 5:
            raise RuntimeError("device lost")
        return forward(*args, **kwargs)

    engine.model.forward = breaks_on_the_fifth_step
    try:
        t0 = time.perf_counter()
        with pytest.raises(RuntimeError, match="device lost"):
            list(engine.stream("Hi there", SamplingParams(max_tokens=40)))
        assert time.perf_counter() - t0 < 5
    finally:
        engine.model.forward = forward
    assert engine.lock.acquire(timeout=5)  # the failed generation let go of the engine
    engine.lock.release()


def test_a_stream_left_early_stops_generating(engine):
    deltas = engine.stream("Tell me a story", SamplingParams(max_tokens=200))
    next(deltas)
    deltas.close()  # the consumer is gone (client disconnect)
    assert engine.lock.acquire(timeout=5)  # generation ended at its next token, not after 200
    engine.lock.release()
