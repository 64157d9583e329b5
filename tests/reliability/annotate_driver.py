"""A separate driver process for the 'driver killed' scenario: joins the test's Ray cluster and runs
the annotate stage with the config given as JSON (the scenario SIGKILLs this process mid-run).

    python tests/reliability/annotate_driver.py <gcs address> '<AnnotateConfig JSON>'
"""

import os
import sys

if __name__ == "__main__":
    import ray

    from treasure.annotate.config import AnnotateConfig
    from treasure.annotate.stage import run

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(address=sys.argv[1], log_to_driver=False)
    run(AnnotateConfig.model_validate_json(sys.argv[2]))
