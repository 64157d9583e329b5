"""Train a causal LM with training-time markers (or the baseline with `markers=off`) on Ray Train.

Run:  .venv/bin/python pipelines/train.py --config pipelines/configs/demo.yaml [train-key=value ...]
e.g.  .venv/bin/python pipelines/train.py --config pipelines/configs/demo.yaml markers=off output=runs/demo/checkpoints/baseline
On a cluster: RAY_ADDRESS=... (or `ray job submit -- python pipelines/train.py ...`); num_workers=8 use_gpu=true.
"""

from __future__ import annotations

import json
import os

if __name__ == "__main__":
    import ray

    from treasure.config import cli_args, load_config
    from treasure.train.config import TrainConfig
    from treasure.train.stage import run

    args = cli_args(__doc__.splitlines()[0], default_config="pipelines/configs/demo.yaml")
    config = load_config(TrainConfig, args.config, args.overrides, section="train")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"])
    else:  # a local cluster pinned to loopback
        ray.init(_node_ip_address="127.0.0.1", dashboard_host="127.0.0.1",
                 runtime_env={"env_vars": {"RAY_AUTH_MODE": os.environ["RAY_AUTH_MODE"]}})
    print(json.dumps(run(config), indent=2))
