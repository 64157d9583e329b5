"""The pure data step, tokenizer and schedule (no Ray): dropout per epoch, masking, truncation, skips."""

from __future__ import annotations

import pytest

from treasure.dropout import DropoutConfig
from treasure.chat_format import IGNORE_INDEX
from treasure.template import split_output, split_prompt
from treasure.train.data_step import batch_order, collate, completion_tokens, format_epoch, load_examples
from treasure.train.loop import lr_multiplier
from treasure.train.tokenizer_bpe import cached_bpe, train_bpe


def _rows(n=40):
    import json

    return [{"id": f"r{i:03d}", "prompt": f"Tell me about item {i}.", "response": "It is a fine item. " * (1 + i % 5),
             "markers": json.dumps({"domain": "Culture", "task": "Explanation", "language": "English"})} for i in range(n)]


@pytest.fixture(scope="module")
def bpe():
    texts = [r["prompt"] + " " + r["response"] + " <TEMPLATE><domain>Culture</domain></TEMPLATE>" for r in _rows()]
    return train_bpe(texts, vocab_size=400)


def test_dropout_redrawn_per_epoch_and_repeatable(bpe, taxonomy):
    ex = load_examples(_rows(), taxonomy)
    drop = DropoutConfig(dataset_rate=0.5, sample_rate=0.5)
    kw = dict(markers=True, dropout=drop, seed=3, max_length=1024)
    e0, e0b, e1 = (format_epoch(ex, bpe, taxonomy, epoch=e, **kw) for e in (0, 0, 1))
    assert e0.input_ids == e0b.input_ids  # same (seed, id, epoch) → same draws (resume repeats them)
    assert e0.input_ids != e1.input_ids  # a new epoch draws anew
    # the completion (labels) always carries the full block: never dropped
    full = {"task": "Explanation", "domain": "Culture", "language": "English"}
    for ids, labels in zip(e1.input_ids, e1.labels):
        completion = bpe.decode([t for t in labels if t != IGNORE_INDEX])
        parsed = split_output(completion, taxonomy)
        assert parsed.markers == full and not parsed.problems
        # the markers the prompt kept open the completion block, in block order; the rest follow
        prompt_markers = split_prompt(bpe.decode([t for t, lab in zip(ids, labels) if lab == IGNORE_INDEX]).split("<|user|>\n")[-1]
                                      .split("\n<|assistant|>")[0], taxonomy)[1]
        order = list(prompt_markers) + [k for k in full if k not in prompt_markers]
        assert completion.startswith("<TEMPLATE>" + "".join(f"<{k}>{full[k]}</{k}>" for k in order) + "</TEMPLATE>")


def test_baseline_has_no_blocks_and_loss_only_on_completion(bpe, taxonomy):
    ex = load_examples(_rows(4), taxonomy)
    data = format_epoch(ex, bpe, taxonomy, markers=False, dropout=DropoutConfig(), seed=0, epoch=0, max_length=128)
    text = bpe.decode(data.input_ids[0])
    assert "TEMPLATE" not in text
    completion = bpe.decode([t for t in data.labels[0] if t != IGNORE_INDEX])
    assert completion == "It is a fine item. </s>"


def test_truncation_and_counted_skips(bpe, taxonomy):
    rows = _rows(6)
    rows[0]["prompt"] = "very long prompt " * 60
    kw = dict(markers=True, dropout=DropoutConfig(dataset_rate=0.0, sample_rate=0.0), seed=0, epoch=0)
    examples = load_examples(rows, taxonomy)
    full = format_epoch(examples[1:], bpe, taxonomy, max_length=10_000, **kw)
    longest_prompt = max(sum(1 for t in labels if t == IGNORE_INDEX) for labels in full.labels)
    limit = longest_prompt + 3  # every normal prompt fits, most completions are cut
    data = format_epoch(examples, bpe, taxonomy, max_length=limit, **kw)
    assert data.skipped == ["r000"] and len(data.ids) == 5
    assert all(len(x) <= limit for x in data.input_ids) and data.truncated > 0


def test_batches_cover_every_example_once_and_pad_masked(bpe, taxonomy):
    data = format_epoch(load_examples(_rows(), taxonomy), bpe, taxonomy, markers=True, dropout=DropoutConfig(),
                        seed=0, epoch=0, max_length=128)
    order = batch_order([len(x) for x in data.input_ids], 8, seed=0, epoch=0)
    assert sorted(i for b in order for i in b) == list(range(len(data.ids)))
    assert order == batch_order([len(x) for x in data.input_ids], 8, seed=0, epoch=0)
    batch = collate(order[0], data, pad_id=bpe.pad_token_id)
    pad = batch["attention_mask"] == 0
    assert (batch["labels"][pad] == IGNORE_INDEX).all() and completion_tokens(batch) > 0


def test_bad_markers_name_the_row(taxonomy):
    rows = _rows(1)
    rows[0]["markers"] = '{"domain": "Astrology"}'
    with pytest.raises(ValueError, match="r000"):
        load_examples(rows, taxonomy)


def test_tokenizer_cache_trains_once(tmp_path):
    calls = []

    def texts():
        calls.append(1)
        return ["hello world"] * 10

    a = cached_bpe(tmp_path, "k", texts, 300)
    b = cached_bpe(tmp_path, "k", texts, 300)
    assert a == b and len(calls) == 1 and (a / "tokenizer.json").exists()


def test_cosine_schedule_with_warmup():
    lrs = [lr_multiplier(s, warmup_steps=10, max_steps=100, min_lr_ratio=0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == 1.0 and lrs[10] == 1.0
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:])) and lrs[-1] > 0.1


def test_prompt_budget_skips_the_same_examples_for_baseline_and_marked(bpe, taxonomy):
    """A long prompt would push a short answer's end-of-turn token past max_length: such examples are skipped and counted."""
    rows = _rows(8)
    rows[3]["prompt"] = "A much longer question about the item and its history, " * 4
    ex = load_examples(rows, taxonomy)
    from treasure.train.data_step import _bare_prompt_length

    budget = max(_bare_prompt_length(bpe, e, taxonomy) for e in ex if e.id != "r003")
    assert _bare_prompt_length(bpe, ex[3], taxonomy) > budget
    kw = dict(dropout=DropoutConfig(dataset_rate=0.0, sample_rate=0.0), seed=0, epoch=0, max_length=512, max_prompt_length=budget)
    marked = format_epoch(ex, bpe, taxonomy, markers=True, **kw)
    baseline = format_epoch(ex, bpe, taxonomy, markers=False, **kw)
    assert marked.skipped == baseline.skipped == ["r003"]
    unbounded = format_epoch(ex, bpe, taxonomy, markers=True, **{**kw, "max_prompt_length": None})
    assert unbounded.skipped == [] and len(unbounded.ids) == 8
    for labels in marked.labels:  # every kept example ends with its end-of-turn token
        assert bpe.decode([t for t in labels if t != IGNORE_INDEX]).endswith("</s>")
