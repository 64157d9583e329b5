"""The packaged pretrained model end to end: train a few steps on Ray Train, save, reload, generate with prefill."""

from __future__ import annotations

import json


def test_smollm2_trains_saves_reloads_and_generates(ray_local, tiny_train_config, mlflow_env, taxonomy, tmp_path):
    import torch
    from safetensors import safe_open

    from treasure.models.checkpoint import read_checkpoint
    from treasure.models.engine import EngineConfig, SamplingParams, load_engine
    from treasure.models.packaged import PACKAGED_SMOLLM2
    from treasure.template import render_request
    from treasure.train.stage import run

    cfg = tiny_train_config(model={"kind": "hf", "path": PACKAGED_SMOLLM2}, max_steps=2, batch_size=2, max_length=64, warmup_steps=1,
                            learning_rate=1e-4, checkpoint_every=2, log_every=1, register=False)
    summary = run(cfg)  # crashed before: transformers refused to save a model loaded from GGUF
    assert summary["metrics"]["steps"] == 2

    info = read_checkpoint(cfg.output)
    config = json.loads((info.local_dir / "config.json").read_text())
    assert "quantization_config" not in config  # plain weights: any transformers / vLLM loads it
    with safe_open(str(info.local_dir / "model.safetensors"), framework="pt") as st:
        assert st.get_tensor("model.layers.0.self_attn.q_proj.weight").dtype == torch.float32  # dequantized, plain tensors
    engine = load_engine(EngineConfig(model=str(info.local_dir)))
    user_turn, prefix = render_request("Why is the sky blue?", {"length_bucket": "concise"}, info.taxonomy)
    gen = engine.generate([user_turn], SamplingParams(max_tokens=24), [prefix])[0]
    assert gen.text.startswith(prefix) and gen.completion_tokens > 0 and gen.finish_reason in ("stop", "length")
    assert len(gen.text) > len(prefix)
