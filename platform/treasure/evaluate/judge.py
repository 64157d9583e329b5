"""Pairwise judges: an LLM behind an OpenAI-compatible HTTP endpoint, or a local model on CPU.

Both judge each pair twice (A/B, then swapped) and combine the two verdicts
(`metrics.combine_orders`) so position bias cancels. A verdict the parser cannot read is a
recorded failure ("failed", with the raw answer kept), never a win.

- `HttpJudge`: POST {base_url}/chat/completions; the key comes from the environment variable
  named in config (never from the config itself, never logged).
- `LocalJudge`: the same judge prompt to a local chat model (default: the packaged
  SmolLM2-135M-Instruct); the verdict is the likelier of the tokens A / B after "[[".
- `LikelihoodScorer`: a local reward-style scorer (mean answer log-probability under a local
  model); the demo's default because it is cheap on CPU.
A 135M model is a weak judge either way: treat its win rates as a smoke signal, not as the paper's.

>>> parse_verdict("Both are fine, but [[B]]")
'B'
>>> parse_verdict("[[A]] no wait [[B]]") is None
True
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from typing import Literal, Sequence

from pydantic import Field

from treasure.config import StrictModel
from treasure.evaluate.metrics import combine_orders
from treasure.models.packaged import PACKAGED_SMOLLM2

JUDGE_SYSTEM = (
    "Please act as an impartial judge and evaluate the quality of the responses provided by two AI "
    "assistants to the user question displayed below. Choose the assistant that follows the user's "
    "instructions and answers the user's question better: consider helpfulness, relevance, accuracy and "
    "level of detail. Do not let the order of the responses, their length or the assistants' names "
    "influence you. After a short explanation, output your final verdict strictly in this format: "
    '"[[A]]" if assistant A is better, "[[B]]" if assistant B is better, and "[[C]]" for a tie.'
)


def judge_user_turn(prompt: str, answer_a: str, answer_b: str) -> str:
    return (f"[User Question]\n{prompt}\n\n[The Start of Assistant A's Answer]\n{answer_a}\n"
            f"[The End of Assistant A's Answer]\n\n[The Start of Assistant B's Answer]\n{answer_b}\n"
            f"[The End of Assistant B's Answer]")


_VERDICT = re.compile(r"\[\[\s*([ABC])\s*\]\]")


def parse_verdict(text: str | None) -> str | None:
    """'A', 'B' or 'C' (tie) when the text names exactly one verdict; None when it is malformed."""
    if not text:
        return None
    found = set(_VERDICT.findall(text))
    return found.pop() if len(found) == 1 else None


def outcome_for_first(verdict: str | None, first_is_a: bool) -> str:
    """Verdict on one order → outcome from the side of the candidate shown first or second."""
    if verdict is None:
        return "failed"
    if verdict == "C":
        return "tie"
    return "win" if (verdict == "A") == first_is_a else "loss"


class JudgeConfig(StrictModel):
    """Which judge to use for win rates."""

    type: Literal["likelihood", "local", "http", "none"] = Field("likelihood", description="likelihood scorer (local model), local model as verdict judge, OpenAI-compatible HTTP endpoint, or none (skip win rates).")
    model: str = Field(PACKAGED_SMOLLM2, description=f"Judge model: a local checkpoint / '{PACKAGED_SMOLLM2}', or the endpoint's model name.")
    base_url: str = Field("http://127.0.0.1:8000/v1", description="OpenAI-compatible base URL (http judge).")
    api_key_env: str | None = Field("TREASURE_JUDGE_API_KEY", description="Environment variable holding the endpoint's key (never the key itself).")
    timeout_s: float = Field(60.0, gt=0, le=3600, description="Per-request timeout (http judge).")
    max_retries: int = Field(2, ge=0, le=10, description="Retries on transport errors and 5xx (http judge); malformed answers are not retried.")
    concurrency: int = Field(4, ge=1, le=256, description="Judge requests in flight at once (http judge).")
    max_tokens: int = Field(512, ge=1, le=8192, description="Judge answer length (http judge).")
    max_answer_chars: int = Field(2000, ge=100, le=100000, description="Answers are cut to this many characters before judging.")
    tie_margin: float = Field(0.05, ge=0.0, le=10.0, description="Likelihood scorer: score differences up to this are ties (nats per token).")
    batch_size: int = Field(8, ge=1, le=256, description="Judge prompts per forward batch (local judge).")


@dataclass
class Judgement:
    """One pair judged in both orders, from candidate A's side."""

    outcome: str  # win / tie / loss / failed
    first: str
    second: str
    raw_first: str
    raw_second: str


class HttpJudge:
    """Judge through an OpenAI-compatible /chat/completions endpoint (httpx)."""

    def __init__(self, config: JudgeConfig):
        import httpx

        self.config = config
        headers = {}
        key = os.environ.get(config.api_key_env) if config.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self.client = httpx.Client(base_url=config.base_url.rstrip("/"), headers=headers, timeout=config.timeout_s)

    def ask(self, user_turn: str) -> str:
        """The judge's raw answer; transport errors become a raw 'ERROR: ...' string (→ failed)."""
        import httpx

        body = {"model": self.config.model, "temperature": 0, "max_tokens": self.config.max_tokens,
                "messages": [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user_turn}]}
        last = ""
        for attempt in range(self.config.max_retries + 1):
            try:
                r = self.client.post("/chat/completions", json=body)
            except httpx.HTTPError as e:
                last = f"ERROR: {type(e).__name__}: {e}"
            else:
                if r.status_code < 500:
                    return _content(r)
                last = f"ERROR: HTTP {r.status_code}: {r.text[:200]}"
            time.sleep(min(2.0, 0.1 * 2 ** attempt))
        return last

    def judge(self, prompts, answers_a, answers_b) -> list[Judgement]:
        return judge_in_both_orders(self, prompts, answers_a, answers_b, self.config.max_answer_chars)

    def verdicts(self, user_turns: Sequence[str]) -> list[tuple[str | None, str]]:
        from concurrent.futures import ThreadPoolExecutor

        # Requests in flight at once: an endpoint serves many; map keeps the order.
        with ThreadPoolExecutor(max_workers=self.config.concurrency) as pool:
            raws = list(pool.map(self.ask, user_turns))
        return [(parse_verdict(raw) if not raw.startswith("ERROR:") else None, raw) for raw in raws]


def _content(response) -> str:
    if response.status_code != 200:
        return f"ERROR: HTTP {response.status_code}: {response.text[:200]}"
    try:
        content = response.json()["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as e:
        return f"ERROR: unreadable response ({type(e).__name__}): {response.text[:200]}"
    return content if isinstance(content, str) else f"ERROR: content is not text: {content!r:.200}"


class LocalJudge:
    """The judge prompt to a local chat model; verdict = likelier of A / B after '[['.

    The model is not asked for a tie: a tie is when the two orders disagree (pure position bias).
    """

    def __init__(self, config: JudgeConfig):
        from treasure.models.engine import EngineConfig, load_engine

        self.config = config
        self.engine = load_engine(EngineConfig(model=config.model, batch_size=config.batch_size))
        tok = self.engine.tokenizer
        self.choice_ids = [tok.encode(c, add_special_tokens=False)[0] for c in "AB"]

    def verdicts(self, user_turns: Sequence[str]) -> list[tuple[str | None, str]]:
        from treasure.models.loglik import continuation_logprobs

        tok = self.engine.tokenizer
        prompts = [tok(tok.apply_chat_template([{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": u}],
                                               tokenize=False, add_generation_prompt=True) + "Final verdict: [[",
                       add_special_tokens=False)["input_ids"] for u in user_turns]
        # Each prompt twice, once per choice token: single-token continuations of one prompt run it once.
        logps = continuation_logprobs(self.engine.model, [p for p in prompts for _ in self.choice_ids],
                                      [[c] for _ in prompts for c in self.choice_ids], batch_size=self.config.batch_size)
        return [("A" if a >= b else "B", f"logprobs A={a:.3f} B={b:.3f}") for a, b in zip(logps[::2], logps[1::2])]

    def judge(self, prompts, answers_a, answers_b) -> list[Judgement]:
        return judge_in_both_orders(self, prompts, answers_a, answers_b, self.config.max_answer_chars)


class LikelihoodScorer:
    """A reward-style scorer: mean log-probability per token of each answer given its prompt.

    Pairs compare scores (difference over `tie_margin` wins, else tie); the order of the pair
    cannot matter, so one scoring per answer replaces the two judged orders. An empty answer
    loses to any non-empty one. A weak proxy for quality: it favours fluent, predictable text.
    """

    def __init__(self, config: JudgeConfig):
        from treasure.models.engine import EngineConfig, load_engine

        self.config = config
        self.engine = load_engine(EngineConfig(model=config.model, batch_size=config.batch_size))
        self.cache: dict[tuple[str, str], float] = {}

    def scores(self, prompts: Sequence[str], answers: Sequence[str]) -> list[float | None]:
        """Mean log-probability per answer token given the prompt (None for an empty answer)."""
        from treasure.models.loglik import continuation_logprobs

        keys = [(p[: self.config.max_answer_chars], a[: self.config.max_answer_chars]) for p, a in zip(prompts, answers)]
        todo = list(dict.fromkeys(k for k in keys if k[1].strip() and k not in self.cache))
        tok = self.engine.tokenizer
        heads = [tok(self.engine.chat_text(p), add_special_tokens=False)["input_ids"] for p, _ in todo]
        bodies = [tok(a, add_special_tokens=False)["input_ids"] for _, a in todo]
        means = continuation_logprobs(self.engine.model, heads, bodies, batch_size=self.config.batch_size, mean=True)
        self.cache.update(zip(todo, means))  # the baseline's answer meets several candidates
        return [self.cache[k] if k[1].strip() else None for k in keys]

    def judge(self, prompts, answers_a, answers_b) -> list[Judgement]:
        sa, sb = self.scores(prompts, answers_a), self.scores(prompts, answers_b)
        out = []
        for x, y in zip(sa, sb):
            o = score_outcome(x, y, self.config.tie_margin)
            raw = f"score A={x} B={y}"
            out.append(Judgement(o, o, o, raw, raw))
        return out


def score_outcome(a: float | None, b: float | None, margin: float) -> str:
    """Outcome for A from two scores; None (empty answer) loses to any score.

    >>> score_outcome(-1.0, -2.0, 0.1), score_outcome(-1.0, -1.05, 0.1), score_outcome(None, -3.0, 0.1)
    ('win', 'tie', 'loss')
    """
    if a is None or b is None:
        return "tie" if a is None and b is None else "loss" if a is None else "win"
    return "win" if a - b > margin else "loss" if b - a > margin else "tie"


def load_judge(config: JudgeConfig) -> HttpJudge | LocalJudge | LikelihoodScorer:
    if config.type == "http":
        return HttpJudge(config)
    if config.type == "local":
        return LocalJudge(config)
    if config.type == "likelihood":
        return LikelihoodScorer(config)
    raise ValueError("judge type 'none' has no judge; skip win rates instead")


def judge_in_both_orders(judge, prompts: Sequence[str], answers_a: Sequence[str], answers_b: Sequence[str], max_chars: int = 2000) -> list[Judgement]:
    """Judge every (prompt, A, B) in both orders; outcomes from A's side."""
    cut = [(p, a[:max_chars], b[:max_chars]) for p, a, b in zip(prompts, answers_a, answers_b)]
    turns = [judge_user_turn(p, a, b) for p, a, b in cut] + [judge_user_turn(p, b, a) for p, a, b in cut]
    results = judge.verdicts(turns)
    n = len(cut)
    out = []
    for i in range(n):
        (v1, raw1), (v2, raw2) = results[i], results[n + i]
        first, second = outcome_for_first(v1, True), outcome_for_first(v2, False)
        out.append(Judgement(combine_orders(first, second), first, second, raw1, raw2))
    return out
