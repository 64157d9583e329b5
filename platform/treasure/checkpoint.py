"""Reading a train checkpoint for other stages (evaluate, serve, tune): download, validate, fall back.

``read_checkpoint(uri)`` accepts the train stage's ``output`` (local or s3://) or any checkpoint
folder in the layout of docs/data-formats.md. Candidates, newest first: the published checkpoint
at ``uri`` itself, then Ray's intermediate checkpoints ``uri/_ray/<run>/checkpoint_step_N``.
s3:// candidates are downloaded to a local cache (``TREASURE_CHECKPOINT_CACHE``, default
``runs/checkpoint_cache``). A candidate is valid when its required files are present, the
manifest's checksums match (where there is a manifest), the JSON files parse and the
safetensors header reads. A corrupt newest checkpoint is skipped with a warning naming the
problem, and the previous one is used; none valid is an error.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

from treasure import storage

REQUIRED = ("config.json", "model.safetensors", "tokenizer_config.json", "taxonomy.yaml", "treasure.json")
STEP_DIR = re.compile(r"checkpoint_step_(\d+)$")


class CheckpointWarning(UserWarning):
    """A checkpoint candidate was corrupt and an older one is used instead."""


@dataclass
class CheckpointInfo:
    """A validated local checkpoint folder, its taxonomy and its treasure.json."""

    local_dir: Path
    taxonomy: object  # treasure.taxonomy.Taxonomy
    meta: dict
    source: str  # the URI this folder came from


def _cache_root() -> Path:
    return Path(os.environ.get("TREASURE_CHECKPOINT_CACHE", "runs/checkpoint_cache"))


def _candidates(uri: str) -> list[str]:
    """Checkpoint folder URIs under `uri`, newest first (published one, then Ray's by step)."""
    found = [uri]
    steps = []
    for f in storage.list_files(storage.join(uri, "_ray")):
        parent = f.rsplit("/", 1)[0]
        m = STEP_DIR.search(parent)
        if m and f.endswith("/treasure.json"):
            steps.append((int(m.group(1)), parent))
    return found + [p for _, p in sorted(steps, reverse=True)]


def _localize(uri: str) -> Path:
    """A local folder holding the files of checkpoint `uri` (downloaded once for s3://)."""
    if not storage.is_s3(uri):
        return Path(uri)
    folder = _cache_root() / hashlib.sha256(uri.encode()).hexdigest()[:16]
    folder.mkdir(parents=True, exist_ok=True)
    prefix = uri.rstrip("/") + "/"
    for f in storage.list_files(uri):
        rel = f[len(prefix):]
        if rel.startswith("_ray/"):
            continue  # intermediate checkpoints are separate candidates
        target = folder / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(storage.read_bytes(f))
    return folder


def validate(folder: Path) -> list[str]:
    """Problems that make `folder` unusable as a checkpoint (empty list: valid)."""
    missing = [n for n in REQUIRED if not (folder / n).is_file()]
    if missing:
        return [f"missing {', '.join(missing)}"]
    problems = []
    manifest = folder / storage.MANIFEST
    if manifest.is_file():
        for entry in json.loads(manifest.read_text())["files"]:
            f = folder / entry["path"]
            if not f.is_file():
                problems.append(f"{entry['path']} listed in manifest but missing")
            elif entry.get("sha256") and hashlib.sha256(f.read_bytes()).hexdigest() != entry["sha256"]:
                problems.append(f"{entry['path']} does not match its manifest checksum")
    for name in ("config.json", "treasure.json"):
        try:
            json.loads((folder / name).read_text())
        except ValueError as e:
            problems.append(f"{name} is not valid JSON: {e}")
    try:
        from safetensors import safe_open

        with safe_open(str(folder / "model.safetensors"), framework="pt") as st:
            if not list(st.keys()):
                problems.append("model.safetensors holds no tensors")
    except Exception as e:  # safetensors raises several types for a damaged file; all mean "corrupt"
        problems.append(f"model.safetensors unreadable: {e}")
    return problems


def read_checkpoint(uri: str) -> CheckpointInfo:
    """The newest valid checkpoint at `uri`; warns (CheckpointWarning) for each corrupt newer one."""
    from treasure.taxonomy import load_taxonomy

    uri = str(uri)
    rejected = []
    for candidate in _candidates(uri):
        local = _localize(candidate)
        problems = validate(local)
        if not problems:
            meta = json.loads((local / "treasure.json").read_text())
            taxonomy = load_taxonomy(local / "taxonomy.yaml")
            if taxonomy.version != meta.get("taxonomy_version"):
                problems = [f"taxonomy.yaml hashes to {taxonomy.version}, treasure.json says {meta.get('taxonomy_version')}"]
        if problems:
            rejected.append(f"{candidate}: {'; '.join(problems)}")
            continue
        for reason in rejected:
            warnings.warn(f"skipping corrupt checkpoint {reason}; using {candidate}", CheckpointWarning, stacklevel=2)
        return CheckpointInfo(local_dir=local, taxonomy=taxonomy, meta=meta, source=candidate)
    raise FileNotFoundError(f"no valid checkpoint at {uri}:\n  " + "\n  ".join(rejected or ["nothing found"]))
