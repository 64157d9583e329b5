"""FSDP's wrap policy: every transformer block is its own FSDP unit (not the whole model as one), for
plain and LoRA-wrapped models; a real FSDP wrap, forward and backward in a one-process gloo group."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

from treasure.train.config import LoraConfig
from treasure.train.model_build import add_lora, block_classes, fsdp_kwargs


def tiny(layers: int = 3) -> LlamaForCausalLM:
    return LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                                        num_attention_heads=2, num_key_value_heads=2))


def test_block_classes_of_plain_and_lora_models():
    assert block_classes(tiny()) == {LlamaDecoderLayer}
    assert block_classes(add_lora(tiny(), LoraConfig(enabled=True, r=2, target_modules=["q_proj"]))) == {LlamaDecoderLayer}
    policy = fsdp_kwargs(tiny())["auto_wrap_policy"]
    layer, embed = tiny().model.layers[0], tiny().model.embed_tokens
    assert policy(module=layer, recurse=False, nonwrapped_numel=0) and not policy(module=embed, recurse=False, nonwrapped_numel=0)


def test_a_model_without_block_classes_is_refused():
    import torch

    with pytest.raises(ValueError, match="names no transformer block class"):
        fsdp_kwargs(torch.nn.Linear(2, 2))


def test_fsdp_wraps_each_block_and_trains(tmp_path):
    from ports import free_port

    script = textwrap.dedent(f"""
        import os, torch, torch.distributed as dist
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        from transformers import LlamaConfig, LlamaForCausalLM
        from treasure.train.model_build import fsdp_kwargs
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="{free_port()}")
        dist.init_process_group("gloo", rank=0, world_size=1)
        lm = LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                          num_attention_heads=2, num_key_value_heads=2))
        model = FSDP(lm, device_id=torch.device("cpu"), **fsdp_kwargs(lm))
        print("units", [n for n, m in model.named_modules() if isinstance(m, FSDP)])
        loss = model(input_ids=torch.tensor([[1, 2, 3]]), labels=torch.tensor([[1, 2, 3]])).loss
        loss.backward()
        print("grads", all(p.grad is not None for p in model.parameters()))
        dist.destroy_process_group()
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert ("units ['', '_fsdp_wrapped_module.model.layers.0', '_fsdp_wrapped_module.model.layers.1', "
            "'_fsdp_wrapped_module.model.layers.2']") in done.stdout
    assert "grads True" in done.stdout
