"""Evaluate a baseline / marked model pair: length control, marker inference, adherence, win rates.

Run:  .venv/bin/python pipelines/evaluate.py --config pipelines/configs/demo.yaml [key=value ...]
Overrides are relative to the `evaluate:` section, e.g. `win_rate.judge.type=http
win_rate.judge.base_url=http://127.0.0.1:8000/v1 win_rate.judge.model=my-judge force=true`.
Ray: RAY_ADDRESS when set (a cluster; e.g. generation.pool.count=8 generation.pool.num_gpus=1
generation.backend=vllm), else a local cluster pinned to 127.0.0.1.
Writes <output>/report.md, metrics.json, PNG plots, data/generations.parquet; logs all to MLflow.
"""

if __name__ == "__main__":
    from treasure.evaluate.config import EvaluateConfig
    from treasure.evaluate.stage import run
    from treasure.stage_script import main

    main(EvaluateConfig, "evaluate", run, __doc__)
