"""The stage contract (treasure.stage) on a toy stage: reuse, force, crash before the manifest, rerun.

The toy stage counts how often its work ran and writes one file whose text depends on the config,
so every test can tell a reused output from a recomputed one. Real MLflow (sqlite), local files
and moto's S3 server; no Ray (the contract does not need it).
"""

from __future__ import annotations

import json

import mlflow
import pytest

from treasure import storage
from treasure.config import StrictModel
from treasure.stage import STAGING, Plan, Result, Stage


class ToyConfig(StrictModel):
    output: str
    experiment: str = "stage-contract"
    word: str = "hello"
    force: bool = False
    push_to: str | None = None  # changes nothing in what is computed: left out of the key


CALLS: list[str] = []


def toy_plan(config: ToyConfig) -> Plan:
    return Plan(run_name="toy", lineage={"word": config.word})


def toy_work(config: ToyConfig, plan: Plan, attempt, crash: str | None = None) -> Result:
    CALLS.append(config.word)
    storage.write_bytes(attempt.path("data/part-0.txt"), config.word.encode())
    storage.write_bytes(attempt.path("report.json"), json.dumps({"n": len(CALLS)}).encode())
    if crash == "work":
        raise RuntimeError("simulated crash in the work")
    return Result(summary={"metrics": {"letters": len(config.word)}}, manifest={"rows": 1})


TOY = Stage("toy", plan=toy_plan, work=toy_work, key_exclude=("push_to",))


@pytest.fixture(autouse=True)
def _fresh_calls():
    CALLS.clear()


def test_first_run_commits_and_logs(tmp_path, mlflow_store):
    out = str(tmp_path / "out")
    summary = TOY.run(ToyConfig(output=out))
    manifest = storage.read_manifest(out)
    assert manifest["stage"] == "toy" and manifest["config"] == {"output": out, "experiment": "stage-contract", "word": "hello"}
    assert sorted(f["path"] for f in manifest["files"]) == ["data/part-0.txt", "report.json"]
    assert storage.read_bytes(storage.join(out, "data/part-0.txt")) == b"hello"
    assert not storage.exists(storage.join(out, STAGING))  # staging removed once committed
    assert summary["cached"] is False and summary["manifest_id"] == manifest["manifest_id"]
    assert summary["metrics"] == {"letters": 5} and summary["output"] == out
    run = mlflow.get_run(summary["mlflow_run_id"])
    assert run.data.tags["stage"] == "toy" and run.data.tags["manifest_id"] == manifest["manifest_id"]
    assert run.data.tags["lineage.word"] == "hello" and run.data.params["word"] == "hello"


def test_reuse_force_and_a_changed_config(tmp_path, mlflow_store):
    out = str(tmp_path / "out")
    first = TOY.run(ToyConfig(output=out))
    again = TOY.run(ToyConfig(output=out, push_to="elsewhere"))  # push_to is not part of the key
    assert CALLS == ["hello"] and again["cached"] is True and again["manifest_id"] == first["manifest_id"]
    assert again["mlflow_run_id"] == first["mlflow_run_id"] and again["metrics"] == first["metrics"]
    forced = TOY.run(ToyConfig(output=out, force=True))
    assert CALLS == ["hello", "hello"] and forced["cached"] is False
    assert forced["mlflow_run_id"] != first["mlflow_run_id"]
    # force is not part of the key either: the forced output is reused by an unforced run
    assert TOY.run(ToyConfig(output=out))["manifest_id"] == forced["manifest_id"] and len(CALLS) == 2
    changed = TOY.run(ToyConfig(output=out, word="bye"))
    assert CALLS[-1] == "bye" and changed["cached"] is False
    assert storage.read_bytes(storage.join(out, "data/part-0.txt")) == b"bye"


def test_a_tampered_output_is_not_reused_silently(tmp_path, mlflow_store):
    out = str(tmp_path / "out")
    TOY.run(ToyConfig(output=out))
    storage.write_bytes(storage.join(out, "data/part-0.txt"), b"edited")
    with pytest.raises(ValueError, match="checksum mismatch"):
        TOY.run(ToyConfig(output=out))


@pytest.mark.parametrize("where", ["work", "commit"])
def test_crash_before_the_manifest_leaves_nothing_committed_and_a_rerun_completes(tmp_path, mlflow_store, monkeypatch, where):
    out = str(tmp_path / "out")
    TOY.run(ToyConfig(output=out))  # an older committed output in the same folder
    if where == "work":
        with pytest.raises(RuntimeError, match="simulated crash"):
            TOY.run(ToyConfig(output=out, word="bye"), crash="work")
    else:  # files already moved into place, the manifest not yet written
        def fail(*args, **kwargs):
            raise OSError("simulated crash before the manifest")

        monkeypatch.setattr(storage, "commit_manifest", fail)
        with pytest.raises(OSError, match="before the manifest"):
            TOY.run(ToyConfig(output=out, word="bye"))
        monkeypatch.undo()
    # The old output was un-committed before any file changed: no reader trusts a mix.
    assert storage.read_manifest(out) is None
    rerun = TOY.run(ToyConfig(output=out, word="bye"))
    assert rerun["cached"] is False and CALLS[-1] == "bye"
    assert storage.read_bytes(storage.join(out, "data/part-0.txt")) == b"bye"
    assert storage.read_manifest(out)["config"]["word"] == "bye"
    assert not storage.exists(storage.join(out, STAGING))


def test_on_s3(s3_bucket, mlflow_store):
    out = f"{s3_bucket}/toy"
    first = TOY.run(ToyConfig(output=out))
    assert storage.read_bytes(f"{out}/data/part-0.txt") == b"hello"
    assert TOY.run(ToyConfig(output=out))["manifest_id"] == first["manifest_id"] and CALLS == ["hello"]
    assert storage.list_files(f"{out}/{STAGING}") == []


def test_stages_and_trials_run_through_the_contract():
    """Every stage module hands its run to its STAGE (one contract), and tune rounds compose them
    through pipeline.run_stages (no second orchestrator)."""
    import inspect

    from treasure.annotate import stage as annotate
    from treasure.corpus import stage as normalize
    from treasure.evaluate import stage as evaluate
    from treasure.train import stage as train
    from treasure.tune import trial

    names = {m.STAGE.name for m in (normalize, annotate, train, evaluate) if isinstance(m.STAGE, Stage)}
    assert names == {"normalize", "annotate", "train", "evaluate"}
    for m in (normalize, annotate, train, evaluate):
        assert "STAGE.run(" in inspect.getsource(m.run)
    source = inspect.getsource(trial)
    assert "run_stages(" in source and "os.chdir(" not in source
