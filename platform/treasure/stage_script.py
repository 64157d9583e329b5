"""The shared body of every `pipelines/<stage>.py` and `treasure <stage>`: command line → config section → Ray → run → summary.

Ray comes from treasure.cluster.init_ray: RAY_ADDRESS when set (a cluster, or a `ray job submit`
job), else a private local cluster pinned to 127.0.0.1.
"""

from __future__ import annotations

import json
from typing import Callable

from treasure.config import cli_args, load_config


def main(model: type, section: str, run: Callable[..., dict], doc: str, argv: list[str] | None = None,
         prog: str | None = None) -> dict:
    """Load `section` of --config (plus key=value overrides) into `model`, init Ray, run, print."""
    from treasure.cluster import init_ray

    args = cli_args(doc.strip().splitlines()[0], default_config="pipelines/configs/demo.yaml", argv=argv, prog=prog)
    config = load_config(model, args.config, args.overrides, section=section)
    init_ray()
    summary = run(config)
    print(json.dumps(summary, indent=2, default=str), flush=True)
    return summary
