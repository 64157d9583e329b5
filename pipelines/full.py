"""The whole method: normalize → annotate → train baseline and marked → evaluate → register.

Run (laptop, embedded default):  make demo
      = .venv/bin/python pipelines/full.py --config pipelines/configs/demo.yaml [key=value ...]
Run (cluster):  ray job submit --working-dir . -- python pipelines/full.py --config pipelines/configs/paper.yaml
Run (CI-sized, ~1 min): .venv/bin/python pipelines/full.py --config pipelines/configs/ci.yaml pipeline.root=/tmp/ci
Overrides address sections, e.g. `train.max_steps=50 pipeline.stages=[normalize,annotate]`;
`pipeline.root=DIR` (or s3://bucket/prefix) moves every relative output of the run under DIR.
Each stage reuses its committed output when the config is unchanged, so a rerun resumes.
"""

from __future__ import annotations

import json
import sys


def main() -> int:
    import treasure
    from treasure.cluster import init_ray
    from treasure.config import cli_args, load_config
    from treasure.pipeline import PipelineConfig, run_pipeline, summary_table

    args = cli_args(__doc__.splitlines()[0], default_config="pipelines/configs/demo.yaml")
    config = load_config(PipelineConfig, args.config, args.overrides)
    # Local: workers share this machine's files and venv. Under `ray job submit --working-dir .` the
    # job's runtime_env already ships the repository to every worker.
    info = init_ray()
    print(f"[pipeline] Ray: {json.dumps(info, default=str)}", flush=True)
    # Under `ray job submit` this is the runtime_env's uploaded copy, not a checkout on the node.
    print(f"[pipeline] treasure package: {treasure.__file__}", flush=True)
    summaries = run_pipeline(config, log=lambda line: print(line, flush=True))
    print("\n" + summary_table(summaries), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
