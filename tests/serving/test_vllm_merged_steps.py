"""vLLM merges the deltas a slow reader has not taken into one output; the engine hands them on token by
token, so the answer's `max_tokens` cuts at the exact token (docs/serving.md, "max_tokens bounds the visible
answer").

Real vLLM on the packaged SmolLM2-135M-Instruct, in a subprocess of its own: the engine sets vLLM's CPU
environment in its process (`cpu_vllm_env`), which must not leak into the test session.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("vllm")

SCRIPT = r'''
import asyncio, json, sys
from treasure.models import vllm_async
from treasure.models.engine import EngineConfig, SamplingParams, prompt_token_ids

calls = []  # every merged delta the engine split, and whether the pieces added up to vLLM's text
real_split = vllm_async.split_delta
def recorded(tokenizer, before, new, text, **kw):
    out = real_split(tokenizer, before, new, text, **kw)
    calls.append([len(new), out is not None])
    return out
vllm_async.split_delta = recorded

async def main():
    engine = vllm_async.AsyncVLLMEngine(EngineConfig(model=sys.argv[1], backend="vllm", dtype="bfloat16", max_model_len=1024))
    ids = prompt_token_ids(engine.tokenizer, "Count from 1 to 40, separated by commas.")
    params = SamplingParams(max_tokens=48, temperature=0.0)
    fast = [(s.text, s.tokens) async for s in engine.steps(ids, params)]
    slow = []
    async for s in engine.steps(ids, params):
        slow.append((s.text, s.tokens, s.finish_reason))
        await asyncio.sleep(0.1)  # a slow reader: vLLM goes on generating and merges what waits
    print("RESULT " + json.dumps({"fast": fast, "slow": slow, "calls": calls}), flush=True)
    engine.shutdown()

if __name__ == "__main__":
    asyncio.run(main())
'''


def test_merged_deltas_reach_the_reader_token_by_token(tmp_path, smollm2_checkpoint):
    script = tmp_path / "merged_steps.py"
    script.write_text(SCRIPT)
    repo = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, str(script), str(smollm2_checkpoint)], capture_output=True, text=True,
                         timeout=600, cwd=repo, env={**os.environ, "PYTHONPATH": str(repo / "platform")})
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line, out.stderr[-3000:]
    got = json.loads(line[len("RESULT "):])
    fast, slow, calls = got["fast"], got["slow"], got["calls"]
    assert any(n > 1 for n, _ in calls), calls  # the slow reader did get merged deltas
    assert all(ok for _, ok in calls), calls  # and each split added up to vLLM's own text
    assert all(tokens == 1 for _, tokens, _ in slow)  # handed on one token a step
    assert "".join(t for t, _, _ in slow) == "".join(t for t, _ in fast) and len(slow) == sum(n for _, n in fast) == 48
    assert slow[-1][2] == "length" and all(reason is None for _, _, reason in slow[:-1])
