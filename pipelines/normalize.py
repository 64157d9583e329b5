"""Normalize the corpus: every configured source → one Parquet table + manifest (docs/corpus.md).

Run:  .venv/bin/python pipelines/normalize.py --config pipelines/configs/demo.yaml [key=value ...]
      e.g. sources.chitchat.max_rows=500 output=s3://bucket/normalized force=true
"""

from __future__ import annotations

import json
import os


def main() -> None:
    import ray

    from treasure.config import cli_args, load_config
    from treasure.corpus.config import NormalizeConfig
    from treasure.corpus.stage import run

    args = cli_args(__doc__.splitlines()[0], default_config="pipelines/configs/demo.yaml")
    config = load_config(NormalizeConfig, args.config, args.overrides, section="normalize")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    address = os.environ.get("RAY_ADDRESS")
    # The stage itself is one plain process; Ray is initialised only to keep the stage contract.
    if address:
        ray.init(address=address)
    else:
        ray.init(num_cpus=1, _node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False)
    try:
        print(json.dumps(run(config), indent=2))
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
