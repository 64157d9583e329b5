"""Search marker-dropout rates (and any train field) with Ray Tune; each trial trains and evaluates.

Run:  .venv/bin/python tuning/search.py --config tuning/configs/demo.yaml [key=value ...]
      (keys are TuneConfig fields: name=..., num_samples=..., rounds=..., space=..., see docs/tuning.md)

Running the same command again after an interruption resumes the search (Tuner.restore): finished
trials are kept, unfinished ones continue from their last round. Ray: RAY_ADDRESS when set, else a
private local cluster on 127.0.0.1. MLflow: MLFLOW_TRACKING_URI (default sqlite:///runs/mlflow.db).
"""

import sys

if __name__ == "__main__":
    from treasure.tune.command import main

    sys.exit(main())
