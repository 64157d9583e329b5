"""Cheap round functions for search-machinery tests (the real round trains and evaluates a model).

Each round writes `round-<r>.started` when it begins and a marker file `round-<r>.done` when it
ends, in the trial's folder; running a round to its end a second time leaves a `.rerun` file, so a
test can prove that a restored search reran nothing. A round that has started means Tune has taken
the previous round's report and checkpoint (a function trainable continues only once the driver
asks for its next result), which is what the restore test waits for before interrupting. TOY_HOLD
makes the first run of one round long, so a test can see that an interrupted round stops. The
metrics are a known function of the sampled rates (best at dataset_rate 0.5), so the best trial is
known in advance.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def toy_round(setup, params, r, state):
    d = Path(state["trial_dir"])
    d.mkdir(parents=True, exist_ok=True)
    marker, started = d / f"round-{r}.done", d / f"round-{r}.started"
    seconds = float(os.environ.get("TOY_ROUND_SECONDS", "0.2"))
    if os.environ.get("TOY_HOLD"):  # "rate:round:seconds": the first run of that round takes longer
        rate, hold_round, hold_seconds = os.environ["TOY_HOLD"].split(":")
        if params["dropout.dataset_rate"] == float(rate) and r == int(hold_round) and not started.exists():
            seconds = float(hold_seconds)
    started.write_text(str(time.time()))
    if marker.exists():
        (d / f"round-{r}.rerun").write_text("ran twice")
    time.sleep(seconds)
    x, s = params["dropout.dataset_rate"], params["dropout.sample_rate"]
    metrics = {"heldout": {"tail": {"loss": (x - 0.5) ** 2 + 1.0 / r}}}
    if r == setup.rounds:
        metrics["longtail"] = {"inference": {"accuracy": 1.0 - (x - 0.5) ** 2 - 0.1 * s}}
        model = d / "model"
        model.mkdir(exist_ok=True)
        (model / "config.json").write_text("{}")  # stands for the checkpoint folder the real round publishes
        state = {**state, "outputs": {**state["outputs"], "model": str(model)}}
    marker.write_text(str(time.time()))
    return metrics, state


def marker_counts(trials_root: Path) -> dict[str, list[str]]:
    """{trial folder: sorted marker file names}."""
    return {p.name: sorted(f.name for f in p.iterdir() if f.suffix in {".done", ".rerun"})
            for p in sorted(Path(trials_root).iterdir()) if p.is_dir()}


TOY_TRAIN = "train: {input: /nonexistent/annotated, output: /nonexistent/model, pool: {num_cpus: 1}}\n"


def toy_overrides(tmp_path, name: str, grid: list[float], *, rounds: int, scheduler: str) -> list[str]:
    """Overrides turning tuning/configs/demo.yaml into a toy search over the cheap round function."""
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(TOY_TRAIN)
    return [
        f"pipeline_config={pipeline}", f"storage_path={tmp_path / 'tune'}", f"name={name}", f"rounds={rounds}",
        "num_samples=1", "train_overrides=[]",
        f"space={{dropout.dataset_rate: {{type: grid, values: {grid}}}, dropout.sample_rate: {{type: choice, values: [0.5]}}}}",
        "objective={terms: [{metric: longtail.inference.accuracy, mode: max}], round_terms: [{metric: heldout.tail.loss, mode: min}]}",
        f"scheduler={{type: {scheduler}, grace_period: 1, reduction_factor: 2}}",
        "resources={trial_cpus: 1, max_concurrent_trials: 1}", f"register_model={name}-best",
    ]
