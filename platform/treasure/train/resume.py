"""Writing training checkpoints and the training resume state: an HF folder plus taxonomy.yaml,
treasure.json and train_state.pt.

Layout (docs/data-formats.md): ``config.json``, ``model.safetensors``, tokenizer files,
``taxonomy.yaml``, ``treasure.json`` ({markers, taxonomy_version, data_manifest_id, config, step,
quality_reference}); intermediate checkpoints add ``train_state.pt`` (optimizer, scheduler, step,
data position) so a restarted worker group resumes at the same step with the same batches.
The layout's file names, and reading checkpoints (download, validation, fallback), live in
treasure.models.checkpoint.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from treasure.models.checkpoint import ADAPTER_DIR, META, TAXONOMY, TRAIN_STATE


def quality_reference(rows: list[dict[str, Any]], percentile: float = 95.0) -> dict[str, float]:
    """Per language: the `percentile` of the `quality` marker over quality_bucket=1 rows (method §5).

    >>> quality_reference([{"markers": '{"quality": "0.5", "quality_bucket": "1", "language": "English"}'},
    ...                    {"markers": '{"quality": "0.9", "quality_bucket": "1", "language": "English"}'},
    ...                    {"markers": '{"quality": "0.1", "quality_bucket": "4", "language": "English"}'}])
    {'English': 0.88}
    """
    scores: dict[str, list[float]] = {}
    for row in rows:
        m = json.loads(row["markers"] or "{}")
        if str(m.get("quality_bucket")) == "1" and "quality" in m:
            lang = m.get("language") or row.get("language") or "Unspecified"
            scores.setdefault(lang, []).append(float(m["quality"]))
    return {lang: round(_percentile(v, percentile), 6) for lang, v in sorted(scores.items())}


def _percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method)."""
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def unwrapped(model):
    """The plain HF model under DDP/FSDP and CompletionLM wrappers (peft models stay peft; see save_model)."""
    from treasure.train.completion_loss import CompletionLM

    model = model.module if hasattr(model, "module") else model
    return model.lm if isinstance(model, CompletionLM) else model


def model_state_dict(model, strategy: str) -> dict | None:
    """Full state dict; under FSDP gathered to rank 0 (None elsewhere)."""
    if strategy != "fsdp":
        return None
    import torch.distributed as dist
    from torch.distributed.fsdp import FullStateDictConfig, FullyShardedDataParallel as FSDP, StateDictType

    with FSDP.state_dict_type(model, StateDictType.FULL_STATE_DICT, FullStateDictConfig(offload_to_cpu=True, rank0_only=True)):
        state = model.state_dict()
    # CompletionLM holds the HF model as `lm`: its keys carry that prefix, the HF folder's do not.
    state = {k.removeprefix("lm."): v for k, v in state.items()}
    return state if dist.get_rank() == 0 else None


def save_model(model, tokenizer, folder: Path, *, state_dict: dict | None = None) -> None:
    """HF folder loadable by plain transformers; LoRA adapters are merged into a copy first and also
    saved alone under `adapter/` (peft format: `PeftModel.from_pretrained(base, folder/"adapter")`)."""
    import copy

    lm = unwrapped(model)
    if hasattr(lm, "merge_and_unload"):  # peft: plain transformers cannot load adapters on their own
        if state_dict is None:  # the adapter alone too (FSDP gathers one full state dict instead: merged only)
            lm.save_pretrained(folder / ADAPTER_DIR)
        lm = copy.deepcopy(lm).merge_and_unload()
    if state_dict is not None:
        lm.save_pretrained(folder, state_dict=state_dict)
    else:
        lm.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def write_meta(folder: Path, *, taxonomy, markers: bool, data_manifest_id: str | None, config: dict,
               step: int, quality_ref: dict[str, float]) -> None:
    (folder / TAXONOMY).write_text(taxonomy.to_yaml(), encoding="utf-8")
    meta = {"markers": markers, "taxonomy_version": taxonomy.version, "data_manifest_id": data_manifest_id,
            "config": config, "step": step, "quality_reference": quality_ref}
    (folder / META).write_text(json.dumps(meta, indent=2, sort_keys=True), encoding="utf-8")


def save_train_state(folder: Path, *, optimizer, scheduler, step: int, epoch: int, batch_in_epoch: int,
                     adapter: dict | None = None) -> None:
    """Resume state; optimizer=None (FSDP: sharded moments) stores none, adapter = LoRA weights."""
    import torch

    torch.save({"optimizer": None if optimizer is None else optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "step": step, "epoch": epoch,
                "batch_in_epoch": batch_in_epoch, "adapter": adapter}, folder / TRAIN_STATE)


def load_train_state(folder: Path) -> dict:
    """The resume state, read with `weights_only=True`: the file may come from shared storage (S3),
    and a full unpickle would run whatever code a tampered file carries. The state holds only
    tensors, numbers, strings and containers, which the safe loader reads."""
    import torch

    return torch.load(Path(folder) / TRAIN_STATE, map_location="cpu", weights_only=True)
