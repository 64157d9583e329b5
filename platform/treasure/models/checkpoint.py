"""The checkpoint layout (its file names, in one place) and reading it: download, validate, fall back.

The train stage writes this layout (treasure.train.resume); evaluate, serve and tune read it here.

``read_checkpoint(uri)`` accepts the train stage's ``output`` (local or s3://) or any checkpoint
folder in the layout of docs/data-formats.md. Candidates, newest first: the published checkpoint
at ``uri`` itself, then Ray's intermediate checkpoints ``uri/_ray/<run>/checkpoint_step_N`` of the
same training run only (same config and data as the published manifest; with no manifest, one run).
s3:// candidates are downloaded to a local cache (``TREASURE_CHECKPOINT_CACHE``, default
``runs/checkpoint_cache``), once per published version (URI + every file's size and modification
time): into a fresh temporary folder, renamed into place when complete, never rewritten in place,
so replicas on one node never truncate files another has memory-mapped; a key that would land
outside the folder (``..``, absolute) makes the candidate invalid. A candidate is valid when its required files are present, the
manifest's checksums match (where there is a manifest), the JSON files parse and the
safetensors header reads. A corrupt newest checkpoint is skipped with a warning naming the
problem, and the previous one is used; none valid is an error. ``resolve_checkpoint`` also takes an
MLflow registry URI ``models:/<name>/<version>`` (downloaded, then read the same way).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import warnings
from pathlib import PurePosixPath
from dataclasses import dataclass
from pathlib import Path

from treasure import storage

# The layout (docs/data-formats.md): a Hugging Face folder plus the marker taxonomy and treasure's metadata.
MODEL_CONFIG = "config.json"
WEIGHTS = "model.safetensors"
TOKENIZER_CONFIG = "tokenizer_config.json"
TAXONOMY = "taxonomy.yaml"  # the taxonomy the model was trained with
META = "treasure.json"  # {markers, taxonomy_version, data_manifest_id, config, step, quality_reference}
MANIFEST = storage.MANIFEST  # written last when a checkpoint is published: file list with checksums
TRAIN_STATE = "train_state.pt"  # intermediate checkpoints only: the resume state (treasure.train.resume)
RAY_DIR = "_ray"  # under a train output: Ray's intermediate checkpoints, _ray/<run>/checkpoint_step_N
STEP_DIR_PREFIX = "checkpoint_step_"
REQUIRED = (MODEL_CONFIG, WEIGHTS, TOKENIZER_CONFIG, TAXONOMY, META)
STEP_DIR = re.compile(STEP_DIR_PREFIX + r"(\d+)$")
REGISTRY_SCHEME = "models:/"  # MLflow model registry URIs: models:/<name>/<version>
MODEL_PATH = "model"  # a run's MLflow model (treasure.models.mlflow_model): MLmodel, code/, artifacts/
MODEL_ARTIFACT = "checkpoint"  # the checkpoint's key among that model's artifacts (MLmodel names its folder)
ADAPTER_DIR = "adapter"  # LoRA runs: the adapter alone (peft's adapter_config.json + adapter_model.safetensors)
MODEL_CARD = "README.md"  # the model card (treasure.models.model_card), as the Hugging Face Hub reads it
CACHE_COMPLETE = ".treasure-cache-complete"  # written last into a downloaded copy: the copy is whole


def step_dir_name(step: int) -> str:
    """The folder name of the intermediate checkpoint at `step`.

    >>> step_dir_name(12)
    'checkpoint_step_000012'
    """
    return f"{STEP_DIR_PREFIX}{step:06d}"


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


def _step_checkpoints(uri: str) -> list[tuple[int, str, str]]:
    """Ray's intermediate checkpoints under `uri` as (step, run folder, URI), newest step first.

    `uri` may be a train output (steps under ``_ray/<run>/``) or one run's folder itself.
    """
    steps = []
    for f in storage.list_files(uri):
        if not f.endswith("/" + META):
            continue
        folder = f.rsplit("/", 1)[0]
        m = STEP_DIR.search(folder)
        if m:
            steps.append((int(m.group(1)), folder.rsplit("/", 1)[0], folder))
    return sorted(steps, reverse=True)


def _run_identity(config: dict, data_manifest_id) -> tuple[str, object]:
    """What makes two checkpoints the same training run: the train config (`force` aside) and the data."""
    return json.dumps({k: v for k, v in (config or {}).items() if k != "force"}, sort_keys=True), data_manifest_id


def _published_identity(uri: str) -> tuple[str, object] | None:
    """The training run the committed output at `uri` came from (its manifest), or None if unknown."""
    try:
        manifest = storage.read_manifest(uri)
    except ValueError:  # a torn manifest names no run
        return None
    if not manifest or "config" not in manifest:
        return None
    return _run_identity(manifest["config"], manifest.get("data_manifest_id"))


def _fallbacks(uri: str) -> list[str]:
    """The intermediate checkpoints that may stand in for a corrupt published one, newest first.

    Only checkpoints of the run the published output came from: a folder retrained with another
    config or data keeps the old run's checkpoints under ``_ray/``, and loading one of those would
    serve a different model under the same name. With no published run to compare to, checkpoints
    of more than one run are ambiguous: an error names them, so the caller picks one.
    """
    steps = _step_checkpoints(uri)
    identity = _published_identity(uri)
    if identity is None:
        runs = sorted({run for _, run, _ in steps})
        if len(runs) > 1:
            raise FileNotFoundError(
                f"{uri}: no intact published checkpoint, and intermediate checkpoints of {len(runs)} training runs "
                f"({', '.join(runs)}); pass one run's folder to choose which")
        return [c for _, _, c in steps]
    chosen = []
    for _, _, candidate in steps:
        try:
            meta = json.loads(storage.read_bytes(storage.join(candidate, META)))
        except (OSError, ValueError):
            chosen.append(candidate)  # unreadable: validation rejects it with the reason
            continue
        if _run_identity(meta.get("config"), meta.get("data_manifest_id")) == identity:
            chosen.append(candidate)
    return chosen


def safe_relpath(rel: str, uri: str) -> PurePosixPath:
    """`rel` (a key below a checkpoint URI) as a path that stays inside the local folder.

    >>> safe_relpath("tokenizer/vocab.json", "s3://b/ckpt")
    PurePosixPath('tokenizer/vocab.json')
    >>> safe_relpath("../../.bashrc", "s3://b/ckpt")
    Traceback (most recent call last):
    ...
    ValueError: s3://b/ckpt: key '../../.bashrc' would land outside the checkpoint folder
    """
    path = PurePosixPath(rel)
    if not rel or path.is_absolute() or any(part in ("..", ".", "") for part in rel.split("/")):
        raise ValueError(f"{uri}: key {rel!r} would land outside the checkpoint folder")
    return path


def _localize(uri: str) -> Path:
    """A local folder holding the files of checkpoint `uri` (s3://: an immutable cached copy per version)."""
    if not storage.is_s3(uri):
        return Path(uri)
    prefix = uri.rstrip("/") + "/"
    files = [(f, safe_relpath(f[len(prefix):], uri), size, mtime) for f, size, mtime in storage.list_file_infos(uri)
             if not f[len(prefix):].startswith(RAY_DIR + "/")]  # intermediate checkpoints are separate candidates
    version = json.dumps([uri, [(str(rel), size, mtime) for _, rel, size, mtime in files]])
    root = _cache_root()
    root.mkdir(parents=True, exist_ok=True)
    folder = root / hashlib.sha256(version.encode()).hexdigest()[:24]
    if (folder / CACHE_COMPLETE).is_file():
        return folder  # this version is already here, whole: never rewritten
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{folder.name}-"))
    try:
        for f, rel, _, _ in files:
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(storage.read_bytes(f))
        (tmp / CACHE_COMPLETE).write_text(uri)
        if folder.exists() and not (folder / CACHE_COMPLETE).is_file():
            folder.rename(root / f".stale-{folder.name}-{os.getpid()}")  # a torn copy (a crash mid-download)
        try:
            tmp.rename(folder)
        except OSError:  # another process on this node finished the same version first: use its copy
            if not (folder / CACHE_COMPLETE).is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def validate(folder: Path) -> list[str]:
    """Problems that make `folder` unusable as a checkpoint (empty list: valid)."""
    missing = [n for n in REQUIRED if not (folder / n).is_file()]
    if missing:
        return [f"missing {', '.join(missing)}"]
    problems = []
    manifest = folder / MANIFEST
    if manifest.is_file():
        try:
            entries = json.loads(manifest.read_text())["files"]
        except (ValueError, KeyError, TypeError) as e:  # torn or hand-edited: the checksums cannot be trusted
            return [f"{MANIFEST} is unreadable ({type(e).__name__})"]
        for entry in entries:
            f = folder / entry["path"]
            if not f.is_file():
                problems.append(f"{entry['path']} listed in manifest but missing")
            elif entry.get("sha256") and hashlib.sha256(f.read_bytes()).hexdigest() != entry["sha256"]:
                problems.append(f"{entry['path']} does not match its manifest checksum")
    for name in (MODEL_CONFIG, META):
        try:
            json.loads((folder / name).read_text())
        except ValueError as e:
            problems.append(f"{name} is not valid JSON: {e}")
    try:
        from safetensors import safe_open

        with safe_open(str(folder / WEIGHTS), framework="pt") as st:
            if not list(st.keys()):
                problems.append(f"{WEIGHTS} holds no tensors")
    except Exception as e:  # safetensors raises several types for a damaged file; all mean "corrupt"
        problems.append(f"{WEIGHTS} unreadable: {e}")
    return problems


def read_checkpoint(uri: str) -> CheckpointInfo:
    """The newest valid checkpoint at `uri`; warns (CheckpointWarning) for each corrupt newer one.

    The published checkpoint comes first; only when it is unusable are its own run's intermediate
    checkpoints tried (`_fallbacks`), newest step first.
    """
    uri = str(uri)
    rejected: list[str] = []
    found = _try_candidate(uri, rejected)
    if found is None:
        try:
            fallbacks = _fallbacks(uri)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"{e}:\n  " + "\n  ".join(rejected)) from None
        for candidate in fallbacks:
            found = _try_candidate(candidate, rejected)
            if found is not None:
                break
    if found is None:
        raise FileNotFoundError(f"no valid checkpoint at {uri}:\n  " + "\n  ".join(rejected or ["nothing found"]))
    for reason in rejected:
        warnings.warn(f"skipping corrupt checkpoint {reason}; using {found.source}", CheckpointWarning, stacklevel=2)
    return found


def _try_candidate(candidate: str, rejected: list[str]) -> CheckpointInfo | None:
    """`candidate` read and validated, or None with the reason appended to `rejected`."""
    from treasure.taxonomy import load_taxonomy

    try:
        local = _localize(candidate)
    except ValueError as e:  # a hostile or broken listing: this candidate is unusable
        rejected.append(f"{candidate}: {e}")
        return None
    problems = validate(local)
    if not problems:
        meta = json.loads((local / META).read_text())
        taxonomy = load_taxonomy(local / TAXONOMY)
        if taxonomy.version != meta.get("taxonomy_version"):
            problems = [f"{TAXONOMY} hashes to {taxonomy.version}, {META} says {meta.get('taxonomy_version')}"]
    if problems:
        rejected.append(f"{candidate}: {'; '.join(problems)}")
        return None
    return CheckpointInfo(local_dir=local, taxonomy=taxonomy, meta=meta, source=candidate)


def checkpoint_in(folder: Path) -> Path | None:
    """The checkpoint inside an MLflow model folder (MLmodel + artifacts/<folder>, written by
    treasure.models.mlflow_model.save_model), read off the MLmodel file, or None."""
    import yaml

    if not (folder / "MLmodel").exists():
        return None
    flavor = (yaml.safe_load((folder / "MLmodel").read_text()) or {}).get("flavors", {}).get("python_function", {})
    entry = (flavor.get("artifacts") or {}).get(MODEL_ARTIFACT)  # MLflow keeps the source folder's own name
    inner = folder / entry["path"] if isinstance(entry, dict) and "path" in entry else None
    return inner if inner is not None and inner.is_dir() and safe_relpath(entry["path"], str(folder)) else None


def find_checkpoint_root(folder: Path) -> Path:
    """The folder holding taxonomy.yaml: the folder itself, the checkpoint inside an MLflow model folder
    (treasure.models.mlflow_model), or one level below (as MLflow may nest it)."""
    if (folder / TAXONOMY).exists():
        return folder
    inner = checkpoint_in(folder)
    if inner is not None and (inner / TAXONOMY).exists():
        return inner
    found = sorted(p.parent for p in folder.glob(f"*/{TAXONOMY}"))
    if len(found) == 1:
        return found[0]
    raise FileNotFoundError(f"{folder}: no {TAXONOMY} (expected the checkpoint layout of docs/data-formats.md)")


def is_registry_uri(uri: str) -> bool:
    """Whether `uri` names an MLflow registered model version (`models:/name/version`)."""
    return str(uri).startswith(REGISTRY_SCHEME)


def registry_name(uri: str) -> str:
    """`models:/name/3` → 'name/3'.

    >>> registry_name("models:/treasure-marked/3")
    'treasure-marked/3'
    """
    return uri[len(REGISTRY_SCHEME):].strip("/")


def resolve_checkpoint(uri: str, download_dir: str | None = None) -> Path:
    """A validated local checkpoint folder for a path, an s3:// URI or an MLflow `models:/name/version` URI.

    Folders and URIs go through `read_checkpoint` (download, checksum validation, fallback to an
    older intact checkpoint); a registry URI is downloaded through MLflow first.
    """
    if is_registry_uri(uri):
        import mlflow.artifacts

        local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=download_dir)
        return Path(read_checkpoint(str(find_checkpoint_root(Path(local)))).local_dir)
    if "://" not in uri and not Path(uri).is_dir():
        raise FileNotFoundError(f"checkpoint {uri!r} is not a folder, an s3:// URI or an MLflow models:/name/version URI")
    return Path(read_checkpoint(uri).local_dir)
