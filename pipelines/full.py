"""The whole method: normalize → annotate → train baseline and marked → evaluate → register.

Run (laptop, embedded default):  make demo
      = .venv/bin/python pipelines/full.py --config pipelines/configs/demo.yaml [key=value ...]
Run (cluster):  ray job submit --working-dir . -- python pipelines/full.py --config pipelines/configs/paper.yaml
Run (CI-sized, ~1 min): .venv/bin/python pipelines/full.py --config pipelines/configs/ci.yaml pipeline.root=/tmp/ci
Overrides address sections, e.g. `train.max_steps=50 pipeline.stages=[normalize,annotate]`;
`pipeline.root=DIR` (or s3://bucket/prefix) moves every relative output of the run under DIR.
Each stage reuses its committed output when the config is unchanged, so a rerun resumes.
"""

import sys

if __name__ == "__main__":
    from treasure.pipeline import main

    sys.exit(main())
