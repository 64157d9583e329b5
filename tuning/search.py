"""Search marker-dropout rates (and any train field) with Ray Tune; each trial trains and evaluates.

Run:  .venv/bin/python tuning/search.py --config tuning/configs/demo.yaml [key=value ...]
      (keys are TuneConfig fields: name=..., num_samples=..., rounds=..., space=..., see docs/tuning.md)

Running the same command again after an interruption resumes the search (Tuner.restore): finished
trials are kept, unfinished ones continue from their last round. Ray: RAY_ADDRESS when set, else a
private local cluster on 127.0.0.1. MLflow: MLFLOW_TRACKING_URI (default sqlite:///runs/mlflow.db).
"""

from __future__ import annotations

import json
import math
import sys

from treasure.cluster import init_ray
from treasure.config import cli_args, load_config
from treasure.tune.config import TuneConfig
from treasure.tune.search import SearchInterrupted, run


def main() -> int:
    args = cli_args(__doc__.splitlines()[0], default_config="tuning/configs/demo.yaml")
    config = load_config(TuneConfig, args.config, args.overrides, section="tune")
    init_ray()
    try:
        summary = run(config)
    except SearchInterrupted as e:
        print(str(e), file=sys.stderr)
        return 130
    print(f"{'trial':<14} " + " ".join(f"{k:>24}" for k in config.space) + f" {'round':>6} {'objective':>10}")
    for row in sorted(summary["trials"], key=lambda r: -r["objective"] if not math.isnan(r["objective"]) else math.inf):
        values = " ".join(f"{row[k]!s:>24}" for k in config.space)
        print(f"{row['trial_id']:<14} {values} {int(row['round']) if not math.isnan(row['round']) else '-':>6} {row['objective']:>10.4f}")
    print(json.dumps({k: summary[k] for k in ("output", "mlflow_run_id", "restored", "registered", "plot", "metrics")},
                     indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
