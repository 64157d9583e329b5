"""Restore after interruption on real Ray: the rerun finishes the search without rerunning finished work.

A driver process runs a 4-trial toy search (2 rounds each, ~2.5 s per round, one trial at a time).
Once two trials are complete and the third has reported its first round, the driver gets SIGINT
(as from Ctrl-C) in the middle of the third trial's second round. Tune saves its state and the
driver exits 130 without ranking or registering anything. Running the search again (here, in the
test process on the shared cluster) restores it with Tuner.restore: every round of every trial ran
once (each round leaves a marker file; a second run of a round leaves a `.rerun` file): the
finished trials were not rerun, the interrupted trial continued from its round-1 checkpoint (only
its in-flight round 2 may run again, if the interrupt beat its report), the trial never started
ran once, and all trials report to the same MLflow parent run.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from ray import cloudpickle

import tune_toy_rounds
from treasure.config import load_config
from treasure.tune import search
from treasure.tune.config import TuneConfig

cloudpickle.register_pickle_by_value(tune_toy_rounds)


def interrupt_point(trials_root) -> bool:
    """Two trials finished and a third one past its first round."""
    if not trials_root.exists():
        return False
    files = list(tune_toy_rounds.marker_counts(trials_root).values())
    return sum("round-2.done" in f for f in files) == 2 and any(f == ["round-1.done"] for f in files)


@pytest.mark.slow  # ~1-4 min (a second Ray cluster in the driver process); `make test-slow`
@pytest.mark.timeout(600)
def test_interrupted_search_resumes_without_rerunning(repo, tmp_path, ray_local, tune_mlflow):
    import mlflow

    overrides = tune_toy_rounds.toy_overrides(tmp_path, "toy-restore", [0.2, 0.4, 0.5, 0.6], rounds=2, scheduler="fifo")
    trials_root = tmp_path / "tune" / "toy-restore.trials"
    env = {**os.environ, "TOY_ROUND_SECONDS": "2.5", "PYTHONPATH": str(repo / "platform")}
    driver = subprocess.Popen([sys.executable, str(repo / "tests" / "tune" / "tune_interrupt_driver.py"), json.dumps(overrides)],
                              cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 200
        while not interrupt_point(trials_root):
            assert driver.poll() is None, f"driver ended early: {driver.communicate()[1][-3000:]}"
            assert time.time() < deadline, "the driver did not reach the interrupt point in time"
            time.sleep(0.1)
        time.sleep(0.8)  # round 1's report and checkpoint land; round 2 is sleeping
        driver.send_signal(signal.SIGINT)
        _, err = driver.communicate(timeout=90)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 130 and "interrupted" in err, err[-3000:]
    before = tune_toy_rounds.marker_counts(trials_root)
    assert len(before) == 3 and all("round-1.done" in f and not any(x.endswith(".rerun") for x in f) for f in before.values()), before
    stamps = {t: [(trials_root / t / f).stat().st_mtime for f in files] for t, files in before.items()}
    in_flight = max(before)  # trial folders sort in start order; the third was running at the interrupt

    config = load_config(TuneConfig, repo / "tuning" / "configs" / "demo.yaml", overrides, section="tune")
    out = search.run(config, round_fn=tune_toy_rounds.toy_round)

    after = tune_toy_rounds.marker_counts(trials_root)
    assert out["restored"] is True and len(after) == 4
    for trial, files in after.items():
        allowed = [["round-1.done", "round-2.done"]] + ([["round-1.done", "round-2.done", "round-2.rerun"]] if trial == in_flight else [])
        assert files in allowed, after
    # The finished trials' rounds and the in-flight trial's round 1 were not run again.
    for t, files in before.items():
        for f, stamp in zip(files, stamps[t]):
            if not (t == in_flight and f == "round-2.done"):
                assert (trials_root / t / f).stat().st_mtime == stamp, (t, f)
    assert sorted(r["dropout.dataset_rate"] for r in out["trials"]) == [0.2, 0.4, 0.5, 0.6]
    assert out["best"]["dropout.dataset_rate"] == 0.5 and out["metrics"]["trials_finished"] == 4
    children = mlflow.search_runs(experiment_names=["treasure-tune"], output_format="list",
                                  filter_string=f"tags.`mlflow.parentRunId` = '{out['mlflow_run_id']}'")
    assert len(children) == 4 and all(c.info.status == "FINISHED" for c in children)
