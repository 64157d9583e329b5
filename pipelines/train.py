"""Train a causal LM with training-time markers (or the baseline with `markers=off`) on Ray Train.

Run:  .venv/bin/python pipelines/train.py --config pipelines/configs/demo.yaml [train-key=value ...]
e.g.  .venv/bin/python pipelines/train.py --config pipelines/configs/demo.yaml markers=off output=runs/demo/checkpoints/baseline
On a cluster: RAY_ADDRESS=... (or `ray job submit -- python pipelines/train.py ...`); pool.count=8 pool.num_gpus=1.
"""

if __name__ == "__main__":
    from treasure.train.config import TrainConfig
    from treasure.train.stage import run
    from treasure.stage_script import main

    main(TrainConfig, "train", run, __doc__)
