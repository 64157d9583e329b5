"""treasure.models.loglik on real (tiny) transformers models, no mocks.

A Markov-chain Llama (known weights: the next token depends only on the current one, with
probabilities chosen here) checks the values by hand; random tiny Llama and GPT-2 models check
the batched, padded and cached paths against an explicit softmax over each whole sequence.
"""

from __future__ import annotations

import math

import pytest
import torch

from treasure.models.loglik import continuation_logprobs, run_prefix, token_logprobs

# P[a][b] = p(next = b | current = a): powers of two, so the expected log-probs are exact sums.
P = [
    [0.5, 0.25, 0.125, 0.125],
    [0.25, 0.25, 0.25, 0.25],
    [0.125, 0.125, 0.25, 0.5],
    [0.0625, 0.0625, 0.375, 0.5],
]


def lp(a: int, b: int) -> float:
    return math.log(P[a][b])


@pytest.fixture(scope="module")
def markov_lm():
    """A one-layer Llama whose attention and MLP write nothing, so logits = lm_head(norm(embedding)).

    Embeddings are one-hot rows (hidden size = vocab size = 4); the final RMSNorm (eps 0) maps a
    one-hot row to 2 x itself, its weight 0.5 undoes that, and lm_head column a holds log P[a].
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=4, hidden_size=4, intermediate_size=4, num_hidden_layers=1, num_attention_heads=1,
                      num_key_value_heads=1, max_position_embeddings=64, rms_norm_eps=0.0, tie_word_embeddings=False)
    lm = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        lm.model.embed_tokens.weight.copy_(torch.eye(4))
        lm.model.layers[0].self_attn.o_proj.weight.zero_()
        lm.model.layers[0].mlp.down_proj.weight.zero_()
        lm.model.norm.weight.fill_(0.5)
        lm.lm_head.weight.copy_(torch.tensor(P).log().T)
    return lm


def test_hand_computed_values_in_one_padded_batch(markov_lm):
    prompts = [[0], [1, 2, 3], [3, 3], [2, 0, 1, 1, 0]]
    conts = [[1, 2, 3], [0], [2, 3, 3, 1], [0, 0]]
    expected = [
        lp(0, 1) + lp(1, 2) + lp(2, 3),
        lp(3, 0),
        lp(3, 2) + lp(2, 3) + lp(3, 3) + lp(3, 1),
        lp(0, 0) + lp(0, 0),
    ]
    got = continuation_logprobs(markov_lm, prompts, conts, batch_size=4)
    assert got == pytest.approx(expected, abs=1e-5)
    means = continuation_logprobs(markov_lm, prompts, conts, batch_size=4, mean=True)
    assert means == pytest.approx([e / len(c) for e, c in zip(expected, conts)], abs=1e-5)
    per_token = token_logprobs(markov_lm, prompts[:1], conts[:1])
    assert per_token[0] == pytest.approx([lp(0, 1), lp(1, 2), lp(2, 3)], abs=1e-6)


def test_hand_computed_values_with_a_shared_prompt_and_a_prefix(markov_lm):
    conts = [[0], [3, 2], [1, 1, 1]]
    expected = [lp(2, 0), lp(2, 3) + lp(3, 2), lp(2, 1) + lp(1, 1) + lp(1, 1)]
    assert continuation_logprobs(markov_lm, [[1, 2]] * 3, conts) == pytest.approx(expected, abs=1e-5)
    head = run_prefix(markov_lm, [1])
    assert continuation_logprobs(markov_lm, [[2]] * 3, conts, prefix=head) == pytest.approx(expected, abs=1e-5)
    # An empty tail reads the prefix's own next-token distribution.
    assert continuation_logprobs(markov_lm, [[]], [[3, 0]], prefix=head) == pytest.approx([lp(1, 3) + lp(3, 0)], abs=1e-5)


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def random_lm(request):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if request.param == "llama":
        cfg = LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                          num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
        return LlamaForCausalLM(cfg).eval()
    return GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=16, n_layer=2, n_head=2, n_positions=64, bos_token_id=0, eos_token_id=0)).eval()


def reference(model, prompt: list[int], cont: list[int]) -> list[float]:
    """Each item alone, unpadded, uncached: explicit log-softmax over the whole sequence's logits."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt + cont])).logits[0].double()
    logp = logits - logits.exp().sum(-1, keepdim=True).log()
    return [float(logp[len(prompt) - 1 + k, t]) for k, t in enumerate(cont)]


def test_batched_shared_and_prefixed_paths_match_the_reference(random_lm):
    g = torch.Generator().manual_seed(1)

    def ids(n):
        return torch.randint(0, 50, (n,), generator=g).tolist()

    shared = ids(7)
    prompts = [ids(3), ids(9), shared, shared, shared, ids(1), shared]
    conts = [ids(5), ids(1), ids(4), ids(1), ids(6), ids(2), ids(2)]
    expected = [reference(random_lm, p, c) for p, c in zip(prompts, conts)]
    cached = token_logprobs(random_lm, prompts, conts, batch_size=3)  # the shared prompt runs once
    uncached = token_logprobs(random_lm, prompts, conts, batch_size=3, share_prompts=False)
    for want, a, b in zip(expected, cached, uncached):
        assert a == pytest.approx(want, abs=1e-5) and b == pytest.approx(want, abs=1e-5)
    # A head shared by several prompts, run once and reused; the prefix itself is left unchanged.
    head = run_prefix(random_lm, shared[:4])
    tails = [shared[4:], shared[4:], shared[4:6]]
    got = token_logprobs(random_lm, tails, [conts[2], conts[4], conts[0]], prefix=head, batch_size=2)
    want = [expected[2], expected[4], reference(random_lm, shared[:6], conts[0])]
    for a, w in zip(got, want):
        assert a == pytest.approx(w, abs=1e-5)
    assert head.cache.get_seq_length() == 4


def test_empty_and_invalid_inputs_raise_clearly(markov_lm):
    assert continuation_logprobs(markov_lm, [], []) == []
    with pytest.raises(ValueError, match="continuation 1 is empty"):
        continuation_logprobs(markov_lm, [[0], [1]], [[1], []])
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        continuation_logprobs(markov_lm, [[]], [[1]])
    with pytest.raises(ValueError, match="2 prompts but 1 continuations"):
        continuation_logprobs(markov_lm, [[0], [1]], [[1]])
    with pytest.raises(TypeError, match="not text"):
        continuation_logprobs(markov_lm, ["hello"], [[1]])
    with pytest.raises(ValueError, match="prefix is empty"):
        run_prefix(markov_lm, [])
