"""The stage contract: how every stage turns a config into a committed output folder.

A stage declares its name, what it reads before any work (`plan`: cheap reads and checks, which
fail before an MLflow run is opened) and its work function; the contract owns the rest, the same
way for every stage (normalize, annotate, train, evaluate, and each tune trial's rounds through
them):

1. **Config key**: the config as recorded, without the fields that change how, not what, a stage
   computes (`force` always; a stage may name more, e.g. where a trained model is pushed).
2. **Reuse**: an output whose manifest was committed by the same stage with the same key (and,
   where the stage asks for it, the same code) is verified and returned as is, `cached: true`;
   `force: true` recomputes.
3. **Un-commit**: before any work, an old manifest is removed, so a reader never trusts a folder
   whose files are about to change.
4. **Staged write**: the work writes what it publishes under `attempt.staging`
   (``<output>/_staging/<key hash>/publish-<attempt>/``); resumable work keeps its progress under
   `attempt.scratch` (``<output>/_staging/<key hash>/``, kept across attempts of one config).
   Files move into place only after the work returned.
5. **Manifest last**: checksums of what storage now holds, the stage name, config key, code
   version and summary; then the attempt's staging is removed (and `_staging` when nothing else
   is left there); the run is tagged with the manifest id. A resumable stage's scratch stays
   after the commit: a rerun after a torn manifest (a crash while it was written) resumes from
   it instead of redoing finished work (annotate's shards); another config's run removes it. A crash anywhere before this leaves no
   committed output, and a rerun starts over (or resumes from `scratch`).
6. **MLflow run**: one run per stage call (nested under the caller's parent run), logging the
   resolved config, taxonomy and lineage (treasure.tracking); its id lands in the summary.

>>> from treasure.config import StrictModel
>>> class Toy(StrictModel):
...     output: str
...     experiment: str = "doc"
...     force: bool = False
...     push_to: str | None = None
>>> Stage("toy", plan=None, work=None, key_exclude=("push_to",)).key(Toy(output="o", push_to="x"))
{'output': 'o', 'experiment': 'doc'}
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from treasure import storage

STAGING = "_staging"


def config_key(config, exclude: tuple[str, ...] = ()) -> dict:
    """A stage config as its output records it: without `force` and the `exclude`d fields."""
    return config.model_dump(mode="json", exclude={"force", *exclude})


def key_hash(config, exclude: tuple[str, ...] = ()) -> str:
    """Short hash of `config_key`: names the scratch folder of one config's attempts."""
    return hashlib.sha256(json.dumps(config_key(config, exclude), sort_keys=True).encode()).hexdigest()[:12]


@dataclass
class Plan:
    """What a stage learned before its work starts (reads and checks only, no output written)."""

    run_name: str  # the MLflow run's name
    taxonomy: Any = None  # logged with the run (version tag and YAML artifact)
    lineage: dict = field(default_factory=dict)  # inputs and their manifest ids, logged with the run
    tags: dict[str, str] = field(default_factory=dict)
    state: Any = None  # whatever the work needs from planning (rows, checkpoints, shard specs)


@dataclass
class Attempt:
    """One attempt at a stage's output: where to write, and the MLflow run it logs to."""

    output: str
    scratch: str  # kept across attempts of one config: resumable progress (annotate's shards)
    staging: str  # this attempt's files to publish, laid out as they will be under `output`
    run_id: str
    started: float = field(default_factory=time.monotonic)

    def path(self, relative: str) -> str:
        """Where the work writes the file that will be published at ``<output>/<relative>``."""
        return storage.join(self.staging, relative)

    def seconds(self) -> float:
        return round(time.monotonic() - self.started, 2)


@dataclass
class Result:
    """What a stage's work hands back: its summary (metrics etc.) and extra manifest fields."""

    summary: dict
    manifest: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Stage:
    """A stage: `plan(config) -> Plan`, `work(config, plan, attempt, **options) -> Result`.

    `after(config, summary) -> summary` runs on both a fresh and a reused output (train's push);
    `code_packages` are the source folders whose code is part of the key (normalize's readers:
    a reader fix must re-read the corpus).
    """

    name: str
    plan: Callable[..., Plan] | None
    work: Callable[..., Result] | None
    key_exclude: tuple[str, ...] = ()
    code_packages: tuple[str, ...] = ()
    after: Callable[[Any, dict], dict] | None = None

    def key(self, config) -> dict:
        """The config as recorded: `force` and `key_exclude` left out (they change how, not what)."""
        return config_key(config, self.key_exclude)

    def key_hash(self, config) -> str:
        return key_hash(config, self.key_exclude)

    def code_version(self) -> str | None:
        """Hash of the `code_packages` sources (None when the stage does not key on its code)."""
        if not self.code_packages:
            return None
        digest = hashlib.sha256()
        root = Path(__file__).parent
        for package in self.code_packages:
            for path in sorted((root / package).glob("*.py")):
                digest.update(path.read_bytes())
        return digest.hexdigest()[:16]

    def committed(self, config) -> dict | None:
        """The committed output of this very config and code, or None (missing, other config, other code)."""
        manifest = storage.read_manifest(config.output)
        if manifest is None or manifest.get("stage") != self.name or manifest.get("config") != self.key(config):
            return None
        if manifest.get("code_version") != self.code_version():
            return None
        return manifest

    def run(self, config, *, parent_run_id: str | None = None, **options) -> dict:
        """Reuse the committed output of this config, or plan, work, publish and commit (module docstring)."""
        from treasure import tracking

        reused = None if config.force else self.committed(config)
        if reused is not None:
            storage.verify_manifest(config.output, reused)
            return self._finish(config, {**reused["summary"], "manifest_id": reused["manifest_id"], "cached": True})
        plan = self.plan(config)
        scratch = storage.join(config.output, STAGING, self.key_hash(config))
        for stale in storage.list_dirs(storage.join(config.output, STAGING)):
            if stale != scratch:  # another config's progress, or a crashed publish: never trusted
                storage.delete(stale)
        for stale in storage.list_dirs(scratch):
            if stale.rsplit("/", 1)[-1].startswith("publish-"):
                storage.delete(stale)
        if storage.read_manifest(config.output) is not None:  # un-commit before any file changes
            storage.delete(storage.join(config.output, storage.MANIFEST))
        with tracking.run(config.experiment, plan.run_name, config=config, taxonomy=plan.taxonomy, lineage=plan.lineage,
                          parent_run_id=parent_run_id, tags={"stage": self.name, **plan.tags}) as active:
            attempt = Attempt(config.output, scratch, storage.join(scratch, f"publish-{uuid.uuid4().hex[:12]}"),
                              active.info.run_id)
            result = self.work(config, plan, attempt, **options)
            summary = {"output": config.output, "mlflow_run_id": attempt.run_id, **result.summary, "cached": False}
            files = publish(attempt)
            manifest = storage.commit_manifest(config.output, files, {
                **result.manifest, "stage": self.name, "config": self.key(config), "code_version": self.code_version(),
                "summary": {**summary, "manifest_id": None, "cached": True}})
            storage.delete(attempt.staging)
            if not storage.list_files(storage.join(config.output, STAGING)):
                storage.delete(storage.join(config.output, STAGING))
            import mlflow

            mlflow.set_tag("manifest_id", manifest["manifest_id"])
            mlflow.log_dict(manifest, f"{self.name}/manifest.json")
        return self._finish(config, {**summary, "manifest_id": manifest["manifest_id"]})

    def _finish(self, config, summary: dict) -> dict:
        return self.after(config, summary) if self.after is not None else summary


def publish(attempt: Attempt) -> list[str]:
    """Move every staged file into place under the output folder; returns their final URIs."""
    import pyarrow.fs as pafs

    fs, staging = storage.filesystem(attempt.staging)
    if fs.get_file_info(staging).type == pafs.FileType.NotFound:
        return []
    final = []
    infos = fs.get_file_info(pafs.FileSelector(staging, recursive=True))
    for info in sorted((i for i in infos if i.type == pafs.FileType.File), key=lambda i: i.path):
        relative = info.path[len(staging.rstrip("/")) + 1:]
        target = storage.join(attempt.output, relative)
        target_path = storage.filesystem(target)[1]
        storage.delete(target)
        fs.create_dir(target_path.rsplit("/", 1)[0], recursive=True)
        fs.move(info.path, target_path)
        final.append(target)
    return final
