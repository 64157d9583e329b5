"""Three Ray nodes on one machine: the CI pipeline completes with annotation and training placed on
different nodes by the stage configs' placement fields, and the placement check refuses what cannot fit.

Runs tests/infra/infra_multinode.py in its own process group (its own RAY_TMPDIR), so the cluster
never meets the session's `ray_local` and is ended even if the test fails. Where every actor ran
comes from the Ray state API (`ray.util.state.list_actors`), not from the pipeline's own words.
"""

from __future__ import annotations

import pytest

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

from infra_processes import BIN, REPO, end_group, ray_env

from treasure.pipeline import STAGES

# Ray gives each new raylet a fixed 30 s to register; on a loaded machine that can pass.
STARTUP_TIMEOUT = "The current node timed out during startup"


def run_multinode(root: Path) -> tuple[int, str]:
    tmp = tempfile.mkdtemp(prefix="rmn")
    proc = subprocess.Popen([str(BIN / "python"), "tests/infra/infra_multinode.py", "--root", str(root)],
                            cwd=REPO, env=ray_env(RAY_TMPDIR=tmp, MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}",
                                                  HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=480)
    finally:
        end_group(proc)
        shutil.rmtree(tmp, ignore_errors=True)
    return proc.returncode, out


def line_after(out: str, prefix: str) -> str:
    assert prefix in out, out[-4000:]
    return out.split(prefix, 1)[1].splitlines()[0]


@pytest.mark.slow  # a 3-node cluster running the whole CI pipeline: over a minute (the pure placement logic is test_infra_placement_config.py)
def test_pipeline_places_annotation_and_training_on_different_nodes(tmp_path):
    root = tmp_path / "run"
    root.mkdir()
    code, out = run_multinode(root)
    if code != 0 and STARTUP_TIMEOUT in out and "nodes: " not in out:
        shutil.rmtree(root)
        root.mkdir()
        code, out = run_multinode(root)  # one fresh attempt, only for a node that never started
    assert code == 0, out[-6000:]
    nodes = json.loads(line_after(out, "nodes: "))
    assert len(set(nodes.values())) == 3

    refused = line_after(out, "placement_check: ")
    assert refused.startswith("refused: training workers need 5 bundles"), refused
    assert "train_node: 4" in refused and "lower train.pool.count" in refused

    # The whole pipeline ran and committed every stage.
    for i, stage in enumerate(STAGES, 1):
        assert f"[pipeline] stage {i}/{len(STAGES)} {stage}: done in " in out
    summary = json.loads(line_after(out, "summary: "))
    for stage in ("normalize", "annotate", "train_baseline", "train_marked", "evaluate"):
        assert summary[stage]["manifest_id"] and summary[stage]["mlflow_run_id"], (stage, summary[stage])
        assert (Path(summary[stage]["output"]) / "manifest.json").exists()
    assert Path(summary["train_marked"]["output"]) == root / "runs/ci/checkpoints/marked"

    # Where the actors ran, as the cluster's state API saw it.
    actors = json.loads(line_after(out, "actors: "))
    finishers = [n for name, ids in actors.items() if "Finisher" in name for n in ids]
    engines = [n for name, ids in actors.items() if "EngineActor" in name for n in ids]
    workers = actors.get("RayTrainWorker", [])
    assert finishers and set(finishers) == {nodes["annotate"]}, actors
    assert engines and set(engines) == {nodes["annotate"]}, actors
    rule_tasks = json.loads(line_after(out, "rule_tasks: "))
    assert rule_tasks == [nodes["annotate"]], rule_tasks
    assert len(workers) == 4 and set(workers) == {nodes["train"]}, actors  # 2 workers × (baseline, marked)
