"""A CI-sized Ray workload with the shape of the pipeline: Ray Data annotation actors, then Ray Train.

Run it anywhere (local cluster, `ray job submit`, a multi-node cluster):

    .venv/bin/python tests/infra/infra_ci_workload.py --rows 64 --steps 2
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python tests/infra/infra_ci_workload.py

It imports `treasure` (so a job proves the package reached the workers), annotates rows with an
actor pool (`treasure.template.render_completion` with length markers), materializes them
(a Ray Data pipeline handed straight to a TorchTrainer can starve on 2 CPUs), and trains a tiny
MLP with 2 DDP workers (gloo) for a few steps on features of the annotated rows. Progress lines
start with "progress:"; the last line is "summary: {json}" with where every actor and worker ran.
`--annotate-resource` / `--train-resource` pin the two phases to nodes that offer those custom
resources (the multi-node test gives each worker node its own). It stands in for
`pipelines/full.py --config <ci config>` until that exists.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time


def progress(msg: str) -> None:
    print(f"progress: {msg}", flush=True)


class Annotate:
    """Ray Data actor: adds length markers and the rendered training target to each row."""

    def __init__(self):
        import ray
        from treasure.taxonomy import load_taxonomy

        self.taxonomy = load_taxonomy("paper")  # loaded once per actor, not per batch
        self.node_id = ray.get_runtime_context().get_node_id()

    def __call__(self, batch: dict) -> dict:
        import numpy as np
        from treasure.template import render_completion

        targets, tokens = [], []
        for response in batch["response"]:
            markers = {"length_tokens": len(response.split()), "length_paragraphs": response.count("\n\n") + 1}
            targets.append(render_completion(markers, response, self.taxonomy))
            tokens.append(markers["length_tokens"])
        batch["target"] = np.array(targets, dtype=object)
        batch["length_tokens"] = np.array(tokens)
        batch["chars"] = np.array([len(t) for t in targets])
        batch["lines"] = np.array([t.count("\n") for t in targets])
        batch["annotated_on"] = np.array([self.node_id] * len(tokens), dtype=object)
        return batch


def train_loop(config: dict) -> None:
    """Runs on every training worker: a tiny MLP regressing length from two text features."""
    import ray
    import ray.train
    import torch
    import torch.distributed as dist
    from ray.train.torch import prepare_model

    torch.manual_seed(config["seed"])
    shard = ray.train.get_dataset_shard("train")
    model = prepare_model(torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1)))
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    rank = ray.train.get_context().get_world_rank()
    nodes: list = [None] * ray.train.get_context().get_world_size()
    dist.all_gather_object(nodes, ray.get_runtime_context().get_node_id())  # where each worker runs
    step, loss = 0, torch.tensor(0.0)
    while step < config["steps"]:
        for batch in shard.iter_batches(batch_size=config["batch_size"], batch_format="numpy"):
            num = {k: torch.as_tensor(batch[k], dtype=torch.float32) for k in ("chars", "lines", "length_tokens")}
            x = torch.stack([num["chars"] / 1000.0, num["lines"] / 10.0], dim=1)  # (B, 2)
            y = (num["length_tokens"] / 100.0).unsqueeze(1)  # (B, 1)
            loss = torch.nn.functional.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if rank == 0:
                print(f"progress: train step {step}/{config['steps']} loss {loss.item():.4f}", flush=True)
            if step >= config["steps"]:
                break
    metrics = {"loss": float(loss.item()), "steps": step, "train_nodes": nodes}
    # Ray Train keeps metrics with checkpoints: rank 0 saves a (tiny) one, every rank reports.
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if rank == 0:
            torch.save(model.state_dict(), f"{tmp}/model.pt")
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=checkpoint)


def rows(n: int) -> list[dict]:
    words = ["marker", "ray", "train", "annotate", "treasure", "hunt", "length"]
    return [{"id": f"ci:{i}", "prompt": f"question {i}",
             "response": " ".join(words[(i + j) % len(words)] for j in range(3 + i % 17)) + "\n\nend."}
            for i in range(n)]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--train-workers", type=int, default=2)
    parser.add_argument("--annotate-resource", default=None, help="custom resource that pins annotation actors")
    parser.add_argument("--train-resource", default=None, help="custom resource that pins training workers")
    parser.add_argument("--storage", default=None, help="Ray Train storage path (local dir or s3://)")
    args = parser.parse_args(argv)

    import ray
    import treasure
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from treasure.cluster import check_placement, init_ray, node_summary

    t0 = time.time()
    info = init_ray()
    progress(f"connected to {info['address']} (local={info['local']}); nodes {json.dumps(node_summary())}")
    progress(f"treasure imported from {treasure.__file__}")
    worker_res = {"CPU": 1.0, **({args.train_resource: 1.0} if args.train_resource else {})}
    check_placement([worker_res] * args.train_workers, "training workers",
                    "lower --train-workers or give the cluster more CPUs (ray start --num-cpus)")

    annotate_res = {args.annotate_resource: 1.0} if args.annotate_resource else None
    # Materialized before training: with every CPU held by training workers, a lazy step left in
    # the plan would wait forever for a CPU (docs/architecture.md, Pitfalls).
    annotated = ray.data.from_items(rows(args.rows)).map_batches(
        Annotate, batch_size=16, compute=ray.data.ActorPoolStrategy(size=1), num_cpus=0.5,
        resources=annotate_res).materialize()
    annotated_on = sorted({r["annotated_on"] for r in annotated.iter_rows()})
    progress(f"annotated {annotated.count()} rows on node(s) {[n[:12] for n in annotated_on]}")

    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"steps": args.steps, "batch_size": 8, "seed": 0},
        scaling_config=ScalingConfig(num_workers=args.train_workers, use_gpu=False, resources_per_worker=worker_res),
        run_config=RunConfig(name="infra_ci", storage_path=args.storage or tempfile.mkdtemp(prefix="infra_ci_")),
        datasets={"train": annotated},
    )
    result = trainer.fit()
    summary = {"rows": annotated.count(), "annotated_on": annotated_on, "train_nodes": result.metrics["train_nodes"],
               "loss": result.metrics["loss"], "steps": result.metrics["steps"],
               "treasure_file": treasure.__file__, "seconds": round(time.time() - t0, 1)}
    progress(f"trained {summary['steps']} steps, loss {summary['loss']:.4f}")
    print("summary: " + json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    main()
    sys.exit(0)
