"""Shipping a checkpoint: the LoRA adapter alone (peft format, loads on its base model with the same
outputs as the merged weights), the whole model to a folder, and the errors for what cannot ship."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from treasure import storage
from treasure.models.checkpoint import read_checkpoint
from treasure.models.export import export
from treasure.train.config import LoraConfig
from treasure.train.model_build import add_lora
from treasure.train.resume import save_model, write_meta


@pytest.fixture(scope="module")
def lora_checkpoint(tmp_path_factory, smollm2_tokenizer, taxonomy):
    """(base model folder, checkpoint folder) of a tiny Llama whose LoRA adapters hold non-zero weights."""
    torch.manual_seed(0)
    tok = smollm2_tokenizer
    base = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                                        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id))
    base_dir = tmp_path_factory.mktemp("base")
    base.save_pretrained(base_dir)
    lm = add_lora(LlamaForCausalLM.from_pretrained(base_dir), LoraConfig(enabled=True, r=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # trained adapters: B is zero at init, which would make the test blind
        for name, p in lm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    folder = tmp_path_factory.mktemp("lora_ckpt")
    save_model(lm, tok, folder)
    write_meta(folder, taxonomy=taxonomy, markers=True, data_manifest_id=None, step=1, quality_ref={},
               config={"model": {"kind": "hf", "path": str(base_dir)}, "lora": {"enabled": True, "r": 4}})
    return base_dir, folder


def logits(model) -> torch.Tensor:
    ids = torch.tensor([[1, 5, 9, 42, 7, 3]])
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_the_adapter_alone_loads_on_its_base_like_the_merged_weights(lora_checkpoint, tmp_path):
    from peft import PeftModel

    base_dir, folder = lora_checkpoint
    merged = logits(AutoModelForCausalLM.from_pretrained(folder))
    assert not torch.allclose(merged, logits(AutoModelForCausalLM.from_pretrained(base_dir)), atol=1e-3)  # it learnt
    in_place = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), folder / "adapter")
    assert torch.allclose(logits(in_place), merged, atol=1e-5)

    shipped = export(str(folder), str(tmp_path / "adapter-only"), adapter_only=True)
    assert {"adapter_config.json", "adapter_model.safetensors", "taxonomy.yaml", "tokenizer_config.json"} <= set(shipped["files"])
    assert "model.safetensors" not in shipped["files"] and "config.json" not in shipped["files"]
    storage.verify_manifest(str(tmp_path / "adapter-only"), storage.read_manifest(str(tmp_path / "adapter-only")))
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), tmp_path / "adapter-only")
    assert torch.allclose(logits(loaded), merged, atol=1e-5)


def test_the_whole_model_ships_as_a_readable_checkpoint(lora_checkpoint, tmp_path):
    _, folder = lora_checkpoint
    export(str(folder), str(tmp_path / "whole"))
    info = read_checkpoint(str(tmp_path / "whole"))  # validated: manifest checksums, taxonomy hash, weights header
    assert json.loads((info.local_dir / "treasure.json").read_text())["step"] == 1
    assert torch.allclose(logits(AutoModelForCausalLM.from_pretrained(tmp_path / "whole")),
                          logits(AutoModelForCausalLM.from_pretrained(folder)))


def test_what_cannot_ship_says_why(tiny_checkpoint, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="holds no LoRA adapter"):
        export(str(tiny_checkpoint), str(tmp_path / "x"), adapter_only=True)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(ValueError, match="needs a token in HF_TOKEN"):
        export(str(tiny_checkpoint), "hf://someone/some-model")
