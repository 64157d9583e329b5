"""The model card written next to every checkpoint (`README.md`, as the Hugging Face Hub reads it).

What a person receiving the model needs: which markers steer it (the taxonomy, its values, the
block a prompt may carry), what it was trained on (data lineage), how (base model, steps, loss,
dropout, LoRA) and, once the pipeline has evaluated it, the evaluation figures. A checkpoint is
committed before it is evaluated, so the card inside it says where the figures are; the registry's
card (the model version's description) carries them.

>>> from treasure.taxonomy import load_taxonomy
>>> card = render({"markers": True, "step": 10, "taxonomy_version": "abc", "data_manifest_id": "m1",
...                "config": {"model": {"kind": "hf", "path": "HuggingFaceTB/SmolLM2-135M"}, "seed": 0}},
...               load_taxonomy("paper"), name="treasure-marked", metrics={"final_loss": 1.5})
>>> card.splitlines()[:4]
['---', 'library_name: transformers', 'base_model: HuggingFaceTB/SmolLM2-135M', 'tags:']
>>> "| length_bucket | concise, medium, long |" in card
True
"""

from __future__ import annotations

import json
from typing import Any

import yaml


def _base_model(config: dict) -> str | None:
    """The base model as the Hub names it (the packaged SmolLM2 is HuggingFaceTB/SmolLM2-135M-Instruct)."""
    from treasure.models.packaged import PACKAGED_SMOLLM2

    model = config.get("model", {})
    if model.get("kind") != "hf":
        return None
    return "HuggingFaceTB/SmolLM2-135M-Instruct" if model.get("path") == PACKAGED_SMOLLM2 else model.get("path")


def _cell(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def render(meta: dict, taxonomy, *, name: str, metrics: dict | None = None, lineage: dict | None = None,
           evaluation: dict | None = None) -> str:
    """The card's Markdown (YAML front matter first) from a checkpoint's `treasure.json` and taxonomy."""
    config = meta.get("config", {})
    base = _base_model(config)
    front = {"library_name": "transformers", **({"base_model": base} if base else {}),
             "tags": ["treasure-hunt", "training-time-markers", *(["lora"] if config.get("lora", {}).get("enabled") else [])]}
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "", f"# {name}", ""]
    if meta.get("markers"):
        lines += ["A causal language model fine-tuned with **training-time markers** (Treasure Hunt): each training "
                  "answer was preceded by a marker block describing it, and a prompt may carry some of those markers "
                  "to steer the answer. Markers you leave out, the model infers and writes in its own block, which "
                  "the serving layer strips and returns as `inferred`.", ""]
    else:
        lines += ["The **baseline** of a Treasure Hunt run: the same data and recipe without marker blocks.", ""]
    block = taxonomy.block_names
    lines += [f"## Markers (taxonomy `{taxonomy.name}`, version `{meta.get('taxonomy_version', taxonomy.version)}`)", "",
              "| category | values | in the block |", "|---|---|---|"]
    for cat in taxonomy.categories:
        values = ", ".join(cat.allowed) if cat.allowed is not None else f"any {cat.kind}"
        lines.append(f"| {cat.name} | {values} | {'yes' if cat.name in block else 'no'} |")
    example = next((c for c in taxonomy.categories if c.name in block and c.allowed), None)
    if meta.get("markers") and example is not None:
        request = {"prompt": "Why is the sky blue?", "markers": {example.name: example.allowed[0]}, "max_tokens": 128}
        lines += ["", "Steer it through Treasure Hunt's server (`POST /v1/generate`, or the OpenAI routes with a "
                  "`markers` field) or the MLflow model (`mlflow.pyfunc.load_model(...).predict([...])`):", "",
                  "```json", json.dumps(request), "```"]
    lines += ["", "## Training", "", "| | |", "|---|---|",
              f"| base model | {base or 'none: a small Llama trained from scratch with its own BPE tokenizer'} |",
              f"| steps | {meta.get('step')} |", f"| seed | {config.get('seed')} |"]
    if config.get("lora", {}).get("enabled"):
        lora = config["lora"]
        lines.append(f"| LoRA | r={lora.get('r')}, alpha={lora.get('alpha')}, modules {', '.join(lora.get('target_modules', []))}; "
                     "merged into the weights, and the adapter alone in `adapter/` |")
    if config.get("dropout"):
        lines.append(f"| prompt-side marker dropout | `{json.dumps(config['dropout'], sort_keys=True)}` |")
    for key, value in (metrics or {}).items():
        lines.append(f"| {key} | {_cell(value)} |")
    lines += ["", "## Training data", "", f"- annotated dataset manifest: `{meta.get('data_manifest_id')}`"]
    for key, value in (lineage or {}).items():
        lines.append(f"- {key}: `{value}`")
    lines += ["", "## Evaluation", ""]
    if evaluation:
        lines += ["| metric | value |", "|---|---|", *(f"| {k} | {_cell(v)} |" for k, v in sorted(evaluation.items()))]
    else:
        lines += ["Not evaluated when this checkpoint was written. The pipeline's evaluation figures are on the "
                  "registered model version (MLflow: its description and `eval.*` tags) and in the evaluate stage's "
                  "report."]
    lines += ["", "## Files", "", "A Hugging Face folder (`config.json`, `model.safetensors`, tokenizer with its chat "
              "template) plus `taxonomy.yaml` (the markers above) and `treasure.json` (training config and lineage).", ""]
    return "\n".join(lines)
