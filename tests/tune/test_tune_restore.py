"""Restore after interruption on real Ray: the rerun finishes the search without rerunning finished work.

The project's search (treasure.tune.search.run: the real Tuner, trial trainable, Tune checkpoints,
MLflow runs, ranking, registration) runs a 4-trial toy search, 2 rounds each, one trial at a
time, on the session's Ray cluster; only the round itself is the cheap toy one. When two trials
have finished and the third has started its (deliberately long) second round, so Tune has taken
its round-1 report and checkpoint, the test process gets SIGINT, exactly as from Ctrl-C: Tune's
handler saves the experiment state and stops, the search raises SearchInterrupted without ranking
or registering anything, and the interrupted round stops instead of running on. Running the same search again restores it with Tuner.restore. Every round
leaves a marker file (a second run of a round leaves a `.rerun` file), so the test sees that the
finished trials were not rerun, that the interrupted trial continued from its round-1 checkpoint
(round 1 not run again, the same MLflow run, one report per round) and that the trial never
started ran once, all under the same MLflow parent run.
"""

import json
import os
import signal
import threading
import time

import pytest
from ray import cloudpickle

import tune_toy_rounds
from treasure.config import load_config
from treasure.tune import search
from treasure.tune.config import TuneConfig

cloudpickle.register_pickle_by_value(tune_toy_rounds)

ROUND_SECONDS = 0.3
# The first run of the third trial's (rate 0.5) second round: the interrupt lands inside it. Shorter
# than the 5 s Tune gives a stopping trial, so that round ends (measured: Tune waits for it).
HOLD_SECONDS = 1.5


def interrupt_point(trials_root) -> bool:
    """Two trials finished and the third one inside its second round."""
    if not trials_root.exists():
        return False
    trials = sorted(p for p in trials_root.iterdir() if p.is_dir())
    return len(trials) == 3 and all((t / "round-2.done").exists() for t in trials[:2]) \
        and (trials[2] / "round-2.started").exists()


def sigint_at(trials_root, fired: list, timeout: float = 120.0) -> threading.Thread:
    """A thread sending SIGINT to this process at the interrupt point, while Tune's handler is installed."""
    original = signal.getsignal(signal.SIGINT)

    def watch():
        deadline = time.time() + timeout
        while time.time() < deadline:
            if interrupt_point(trials_root):
                # Only Tune's handler may receive it: the default one would end pytest itself.
                if signal.getsignal(signal.SIGINT) is not original:
                    os.kill(os.getpid(), signal.SIGINT)
                    fired.append(time.time())
                return
            time.sleep(0.02)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@pytest.mark.timeout(300)
def test_interrupted_search_resumes_without_rerunning(repo, tmp_path, ray_local, tune_mlflow):
    import mlflow

    overrides = tune_toy_rounds.toy_overrides(tmp_path, "toy-restore", [0.2, 0.4, 0.5, 0.6], rounds=2, scheduler="fifo")
    config = load_config(TuneConfig, repo / "tuning" / "configs" / "demo.yaml", overrides, section="tune")
    trials_root = tmp_path / "tune" / "toy-restore.trials"
    env = {"TOY_ROUND_SECONDS": str(ROUND_SECONDS), "TOY_HOLD": f"0.5:2:{HOLD_SECONDS}"}

    original = signal.getsignal(signal.SIGINT)
    fired: list = []
    watcher = sigint_at(trials_root, fired)
    try:
        with pytest.raises(search.SearchInterrupted, match="interrupted with 2 of 4 trials ended"):
            search.run(config, round_fn=tune_toy_rounds.toy_round, env=env)
    finally:
        signal.signal(signal.SIGINT, original)
    watcher.join(timeout=5)
    assert fired, "the search did not reach the interrupt point"

    time.sleep(HOLD_SECONDS + 0.5)  # whatever the interrupted round still does, it has done by now
    before = tune_toy_rounds.marker_counts(trials_root)
    finished, in_flight = sorted(before)[:2], sorted(before)[2]  # trial folders sort in start order
    assert len(before) == 3 and all(before[t] == ["round-1.done", "round-2.done"] for t in finished), before
    assert before[in_flight] in (["round-1.done"], ["round-1.done", "round-2.done"]), before
    stamps = {t: {f: (trials_root / t / f).stat().st_mtime for f in files} for t, files in before.items()
              if t != in_flight} | {in_flight: {"round-1.done": (trials_root / in_flight / "round-1.done").stat().st_mtime}}
    client = mlflow.MlflowClient()
    parent = json.loads((tmp_path / "tune" / f"toy-restore.{search.SEARCH_FILE}").read_text())["search_run_id"]
    assert "best_objective" not in client.get_run(parent).data.metrics  # nothing ranked from a partial search

    out = search.run(config, round_fn=tune_toy_rounds.toy_round, env=env)

    after = tune_toy_rounds.marker_counts(trials_root)
    assert out["restored"] is True and len(after) == 4
    # Every round ran once, except the interrupted trial's round 2, whose result Tune discarded.
    assert all(after[t] == ["round-1.done", "round-2.done"] for t in after if t != in_flight), after
    assert after[in_flight] in (["round-1.done", "round-2.done"], ["round-1.done", "round-2.done", "round-2.rerun"]), after
    # The finished trials' rounds and the in-flight trial's round 1 are the files from before the interrupt.
    for t, files in stamps.items():
        for f, stamp in files.items():
            assert (trials_root / t / f).stat().st_mtime == stamp, (t, f)
    assert sorted(r["dropout.dataset_rate"] for r in out["trials"]) == [0.2, 0.4, 0.5, 0.6]
    assert out["metrics"]["trials_finished"] == 4
    # objective = 1 - (x - .5)^2 - .1 * .5 (tune_toy_rounds), best at 0.5: the interrupted trial.
    assert out["best"]["dropout.dataset_rate"] == 0.5 and out["best"]["objective"] == pytest.approx(0.95)
    assert f"trial-{out['best']['trial_id']}" == in_flight

    assert out["mlflow_run_id"] == parent
    children = mlflow.search_runs(experiment_names=["treasure-tune"], output_format="list",
                                  filter_string=f"tags.`mlflow.parentRunId` = '{out['mlflow_run_id']}'")
    assert len(children) == 4 and all(c.info.status == "FINISHED" for c in children)
    # The interrupted trial kept its MLflow run: one report per round, round 1 from before the interrupt.
    resumed = next(c for c in children if c.data.tags["tune.trial_id"] == out["best"]["trial_id"])
    steps = [m.step for m in client.get_metric_history(resumed.info.run_id, "round_objective")]
    assert steps.count(1) == 1 and steps[-1] == 2, steps  # round 1 reported once: resumed from its checkpoint
    assert out["registered"]["trial_run_id"] == resumed.info.run_id
