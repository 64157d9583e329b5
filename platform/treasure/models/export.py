"""Ship a checkpoint: the whole model, or a LoRA run's adapter alone, to the Hugging Face Hub or a folder.

`export(checkpoint, target)` reads the checkpoint (local, s3:// or models:/, validated as every
reader does), picks the files a receiver needs and sends them:

- the whole model: the Hugging Face folder (weights, config, tokenizer with its chat template),
  `taxonomy.yaml`, `treasure.json` and the model card `README.md`; not the resume state;
- `adapter_only`: the peft adapter (`adapter_config.json`, `adapter_model.safetensors`) at the
  top level, with the tokenizer, taxonomy, metadata and card, so
  `PeftModel.from_pretrained(base, target)` loads it on the base model it was trained from.

A target `hf://<org>/<name>` is a Hub model repository (created private unless `private=False`;
the token comes from `HF_TOKEN` in the environment, never from config); any other target is a
folder or URI (local, s3://) written through `treasure.storage`, with a manifest committed last.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from treasure import storage
from treasure.models.checkpoint import ADAPTER_DIR, MANIFEST, TRAIN_STATE, resolve_checkpoint

HUB_SCHEME = "hf://"
LEFT_OUT = {TRAIN_STATE, MANIFEST, ".treasure-cache-complete"}


def files_to_ship(folder: Path, adapter_only: bool) -> dict[str, Path]:
    """{name in the target: local file} for a checkpoint folder."""
    if adapter_only:
        adapter = folder / ADAPTER_DIR
        if not (adapter / "adapter_config.json").is_file():
            raise ValueError(f"{folder} holds no LoRA adapter (`adapter/`): it was not trained with lora.enabled, "
                             "or with FSDP (merged weights only); export the whole model instead")
        ship = {p.name: p for p in adapter.iterdir() if p.is_file() and p.name != "README.md"}
        weights = {"model.safetensors", "config.json", "generation_config.json"}
        ship.update({p.name: p for p in folder.iterdir() if p.is_file() and p.name not in LEFT_OUT | weights})
        return ship
    return {str(p.relative_to(folder)): p for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name not in LEFT_OUT and not p.relative_to(folder).parts[0].startswith(".")}


def export(checkpoint: str, target: str, *, adapter_only: bool = False, private: bool = True) -> dict:
    """Send the checkpoint's model (or adapter) to `target`; returns {target, files, adapter_only}."""
    folder = Path(resolve_checkpoint(checkpoint))
    ship = files_to_ship(folder, adapter_only)
    if target.startswith(HUB_SCHEME):
        _push_to_hub(target[len(HUB_SCHEME):], ship, private)
    else:
        written = []
        for name, path in sorted(ship.items()):
            uri = storage.join(target, name)
            storage.write_bytes(uri, path.read_bytes())
            written.append(uri)
        storage.commit_manifest(target, written, {"exported_from": checkpoint, "adapter_only": adapter_only})
    return {"target": target, "files": sorted(ship), "adapter_only": adapter_only}


def _push_to_hub(repo_id: str, ship: dict[str, Path], private: bool) -> None:
    from huggingface_hub import HfApi

    token = os.environ.get("HF_TOKEN")
    if not token:
        raise ValueError("pushing to the Hub needs a token in HF_TOKEN (the environment, never a config file)")
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    with tempfile.TemporaryDirectory(prefix="treasure-push-") as staging:
        for name, path in ship.items():
            (Path(staging) / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, Path(staging) / name)
        api.upload_folder(repo_id=repo_id, folder_path=staging, commit_message="Treasure Hunt checkpoint")
