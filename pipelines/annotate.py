"""Annotate the normalized corpus with markers (rules, metadata, language id, LLM tagger, quality).

Run:  .venv/bin/python pipelines/annotate.py --config pipelines/configs/demo.yaml [annotate.key=value ...]
Overrides are relative to the `annotate:` section, e.g. `tagger.max_rows=0 force=true`.
Ray: RAY_ADDRESS when set (a cluster), else a local cluster pinned to 127.0.0.1.
"""

import json
import os

import ray

from treasure.annotate.config import AnnotateConfig
from treasure.annotate.stage import run
from treasure.config import cli_args, load_config

if __name__ == "__main__":
    args = cli_args(__doc__.splitlines()[0], default_config="pipelines/configs/demo.yaml")
    config = load_config(AnnotateConfig, args.config, args.overrides, section="annotate")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"])
    else:
        ray.init(_node_ip_address="127.0.0.1", include_dashboard=True, dashboard_host="127.0.0.1",
                 runtime_env={"env_vars": {"RAY_AUTH_MODE": os.environ["RAY_AUTH_MODE"]}})
    print(json.dumps(run(config), indent=2))
