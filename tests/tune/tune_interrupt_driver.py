"""A search driver that a test interrupts: runs the toy search in its own process and Ray cluster.

    python tests/tune/tune_interrupt_driver.py OVERRIDES_JSON
Exit code 130 with "interrupted" on stderr when stopped by SIGINT before every trial finished.
"""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import tune_toy_rounds  # noqa: E402
from ray import cloudpickle  # noqa: E402

from treasure.cluster import init_ray  # noqa: E402
from treasure.config import load_config  # noqa: E402
from treasure.tune.config import TuneConfig  # noqa: E402
from treasure.tune.search import SearchInterrupted, run  # noqa: E402

if __name__ == "__main__":
    cloudpickle.register_pickle_by_value(tune_toy_rounds)
    overrides = json.loads(sys.argv[1])
    config = load_config(TuneConfig, Path(__file__).parents[2] / "tuning" / "configs" / "demo.yaml", overrides, section="tune")
    init_ray(num_cpus=2)
    try:
        run(config, round_fn=tune_toy_rounds.toy_round, env={"TOY_ROUND_SECONDS": os.environ["TOY_ROUND_SECONDS"]})
    except SearchInterrupted as e:
        print(f"interrupted: {e}", file=sys.stderr)
        sys.exit(130)
    print("search finished")
