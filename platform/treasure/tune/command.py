"""The dropout search's command: run or resume the search and print its trials as a table.

Search marker-dropout rates (and any train field) with Ray Tune; each trial trains and evaluates.
Used by `tuning/search.py` and `treasure tune` (keys are TuneConfig fields: name=..., num_samples=...,
rounds=..., space=..., see docs/tuning.md). Running the same command again after an interruption
resumes the search (Tuner.restore). Ray: RAY_ADDRESS when set, else a private local cluster on
127.0.0.1. MLflow: MLFLOW_TRACKING_URI (default sqlite:///runs/mlflow.db).
"""

from __future__ import annotations

import json
import sys
import time

from treasure.cluster import init_ray
from treasure.config import cli_args, load_config
from treasure.tune.config import TuneConfig
from treasure.tune.results import results_table
from treasure.tune.search import SearchInterrupted, run


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """`tuning/search.py` and `treasure tune`: run (or resume) the search, print the trials table."""
    args = cli_args(__doc__.splitlines()[0], default_config="tuning/configs/demo.yaml", argv=argv, prog=prog)
    config = load_config(TuneConfig, args.config, args.overrides, section="tune")
    init_ray()
    start = time.time()
    try:
        summary = run(config)
    except SearchInterrupted as e:
        print(str(e), file=sys.stderr)
        return 130
    print(results_table(summary["trials"], config))
    print(f"search wall time: {time.time() - start:.0f} s (after Ray start-up)")
    print(json.dumps({k: summary[k] for k in ("output", "mlflow_run_id", "restored", "registered", "plot", "metrics")},
                     indent=2, default=str))
    return 0

