"""The Ray Train worker loop, written out once, top to bottom: setup → resume → epochs of steps → checkpoints.

Runs inside every TorchTrainer worker (DDP rank). Data arrives as this worker's Ray Data shard;
each epoch is formatted with fresh marker dropout and tokenized once (treasure.train.data_step);
the loss falls on completion tokens only; gradients accumulate over `grad_accum` micro-batches;
the LR warms up linearly, then follows a cosine (paper: 10 warm-up steps, peak 2.5e-4); bf16
autocast where `precision` resolves to it (GPUs, and CPUs with bf16 instructions); logits are
computed only at labelled positions (treasure.train.completion_loss). Rank 0 writes checkpoints (HF folder + taxonomy + resume state) and per-step
metrics to MLflow; the metrics stay tensors until every `log_every` steps (``StepLog``), so a step
costs no host sync and no extra collective. A restarted worker group resumes from the last checkpoint at the same step,
epoch and batch, so it replays the same batches and dropout draws.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import sys
import tempfile
import time
from pathlib import Path


def lr_multiplier(step: int, *, warmup_steps: int, max_steps: int, min_lr_ratio: float) -> float:
    """Linear warm-up to 1, then cosine decay to `min_lr_ratio` at `max_steps`.

    >>> [round(lr_multiplier(s, warmup_steps=2, max_steps=6, min_lr_ratio=0.0), 2) for s in range(6)]
    [0.5, 1.0, 1.0, 0.85, 0.5, 0.15]
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _taxonomy_from_yaml(text: str):
    import yaml

    from treasure.taxonomy import Taxonomy

    return Taxonomy.model_validate(yaml.safe_load(text))


def _tokenizer(cfg, tokenizer_files: dict[str, bytes] | None):
    from treasure.train.model_build import load_tokenizer

    if cfg.model.kind != "tiny":
        return load_tokenizer(cfg.model, None)
    folder = Path(tempfile.mkdtemp(prefix="treasure-tok-"))  # files travel in the loop config: no shared disk needed
    for name, blob in tokenizer_files.items():
        (folder / name).write_bytes(blob)
    return load_tokenizer(cfg.model, str(folder))


def _mlflow_logger(mlflow_info: dict | None):
    """log(metrics, step, flush=False, timestamp_ms=None): buffers per-step metrics for the stage's MLflow
    run (rank 0) and writes them in one batch on flush, so a database write does not slow every step."""
    if not mlflow_info:
        return lambda metrics, step, flush=False, timestamp_ms=None: None
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient(mlflow_info["tracking_uri"])
    buffer: list = []

    def log(metrics: dict[str, float], step: int, flush: bool = False, timestamp_ms: int | None = None) -> None:
        now = timestamp_ms if timestamp_ms is not None else int(time.time() * 1000)
        buffer.extend(Metric(k, float(v), now, step) for k, v in metrics.items())
        if flush or len(buffer) >= 900:  # MLflow takes at most 1000 metrics per batch
            client.log_batch(mlflow_info["run_id"], metrics=buffer)
            buffer.clear()

    return log


def _record_shard(mlflow_info: dict | None, rank: int, ids: list[str]) -> None:
    """Tag the run with what this rank read (rows and a fingerprint of its ids): shards are auditable."""
    if not mlflow_info:
        return
    from mlflow import MlflowClient

    fingerprint = hashlib.sha256("\n".join(ids).encode()).hexdigest()[:12]
    MlflowClient(mlflow_info["tracking_uri"]).set_tag(mlflow_info["run_id"], f"shard.rank{rank}", f"{len(ids)}:{fingerprint}")


def _all_reduce(values: list[float], op: str = "sum") -> list[float]:
    """Sum (or min) small numbers over the DDP group; identity with one worker."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    backend_gpu = dist.get_backend() == "nccl"
    t = torch.tensor(values, dtype=torch.float64, device="cuda" if backend_gpu else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MIN if op == "min" else dist.ReduceOp.SUM)
    return t.tolist()


class StepLog:
    """Per-step metrics held as tensors until a flush: no host sync per step (a GPU keeps queueing work)
    and one collective per flush instead of one per step.

    ``add`` takes the step's summed loss and grad norm as 0-d tensors (any device) and plain numbers;
    ``flush`` turns every pending step into floats with one transfer, sums loss and tokens over the DDP
    group in one all-reduce (loss is then averaged over ranks), raises FloatingPointError at the first
    non-finite loss, and returns one dict per step (loss, tokens, tokens_per_second, learning_rate,
    grad_norm, epoch, step, elapsed_seconds, time_ms). All ranks must flush at the same steps.

    >>> import torch
    >>> log = StepLog(world=1)
    >>> log.add(step=1, loss=torch.tensor(2.0), grad_norm=torch.tensor(0.5), tokens=100, seconds=0.5,
    ...         learning_rate=1e-3, epoch=0, elapsed_seconds=0.5)
    >>> [(m["step"], m["loss"], m["tokens_per_second"]) for m in log.flush()]
    [(1, 2.0, 200.0)]
    >>> log.flush()
    []
    """

    def __init__(self, world: int):
        self.world = world
        self.pending: list[dict] = []

    def add(self, *, step: int, loss, grad_norm, tokens: int, seconds: float, learning_rate: float, epoch: int,
            elapsed_seconds: float) -> None:
        self.pending.append({"step": step, "loss": loss.detach(), "grad_norm": grad_norm.detach(), "tokens": tokens,
                             "seconds": seconds, "learning_rate": learning_rate, "epoch": epoch,
                             "elapsed_seconds": elapsed_seconds, "time_ms": int(time.time() * 1000)})

    def flush(self) -> list[dict]:
        import torch

        if not self.pending:
            return []
        pending, self.pending = self.pending, []
        n = len(pending)
        local = torch.stack([torch.stack([p["loss"].float(), p["grad_norm"].float()]) for p in pending]).cpu().tolist()
        reduced = _all_reduce([x[0] for x in local] + [float(p["tokens"]) for p in pending])
        out = []
        for i, p in enumerate(pending):
            loss, tokens = reduced[i] / self.world, reduced[n + i]
            if not math.isfinite(loss):
                raise FloatingPointError(f"loss is {loss} at step {p['step']}")
            out.append({**p, "loss": loss, "grad_norm": local[i][1], "tokens": tokens,
                        "tokens_per_second": tokens / p["seconds"] if p["seconds"] > 0 else 0.0})
        return out


def train_loop_per_worker(loop_config: dict) -> None:
    import ray.train
    import ray.train.torch
    import torch
    from transformers import AutoModelForCausalLM

    from treasure.models.checkpoint import step_dir_name
    from treasure.train import resume as ckpt
    from treasure.train.config import TrainConfig
    from treasure.train.data_step import batch_order, collate, format_epoch, load_examples
    from treasure.train.completion_loss import CompletionLM, supports_completion_logits
    from treasure.train.model_build import add_lora, build_model, fsdp_kwargs, resolve_precision

    # --- setup: config, taxonomy, tokenizer, this worker's shard ---------------------------------
    cfg = TrainConfig.model_validate(loop_config["train"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if not cfg.use_gpu:
        torch.set_num_threads(cfg.torch_threads)  # Ray pins OMP threads to the CPUs reserved
    device = ray.train.torch.get_device()
    taxonomy = _taxonomy_from_yaml(loop_config["taxonomy_yaml"])
    tokenizer = _tokenizer(cfg, loop_config.get("tokenizer_files"))
    shard = ray.train.get_dataset_shard("train")
    examples = load_examples(shard.iter_rows(), taxonomy)  # small corpus: the shard is read once
    log_mlflow = _mlflow_logger(loop_config.get("mlflow") if rank == 0 else None)
    _record_shard(loop_config.get("mlflow"), rank, [e.id for e in examples])

    # --- model, optimizer, schedule; resume state if a checkpoint exists --------------------------
    resume = ray.train.get_checkpoint()
    state = None
    if resume is not None:
        with resume.as_directory() as d:
            state = ckpt.load_train_state(Path(d))
            if not cfg.lora.enabled:  # full weights are in the HF folder
                lm = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
    if resume is None or cfg.lora.enabled:
        lm = build_model(cfg.model, tokenizer, max_length=cfg.max_length, seed=cfg.seed)
    if cfg.lora.enabled:
        lm = add_lora(lm, cfg.lora)
        if state is not None:
            lm.load_state_dict(state["adapter"], strict=False)
    completion_only = cfg.completion_logits and supports_completion_logits(lm)
    model = ray.train.torch.prepare_model(CompletionLM(lm) if completion_only else lm, parallel_strategy=cfg.strategy,
                                          parallel_strategy_kwargs=fsdp_kwargs(lm) if cfg.strategy == "fsdp" else None)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_multiplier(
        s, warmup_steps=cfg.warmup_steps, max_steps=cfg.max_steps, min_lr_ratio=cfg.min_lr_ratio))
    step, epoch, start_batch = 0, 0, 0
    if state is not None:
        if state["optimizer"] is not None:  # None under FSDP: moments restart (see docs/training.md)
            optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, epoch, start_batch = state["step"], state["epoch"], state["batch_in_epoch"]
    precision = resolve_precision(cfg.precision, use_gpu=cfg.use_gpu)
    log_mlflow({"resumed_from_step": step, "torch_threads": torch.get_num_threads(), "bf16_autocast": precision == "bf16",
                "completion_only_logits": completion_only}, step, flush=True)
    step_log = StepLog(world)
    loop_start = time.perf_counter()
    autocast = ((lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if precision == "bf16" else contextlib.nullcontext)

    # --- epochs: fresh dropout draws, tokenized once; micro-batches → optimizer steps -------------
    model.train()
    while step < cfg.max_steps:
        data = format_epoch(examples, tokenizer, taxonomy, markers=cfg.markers, dropout=cfg.dropout,
                            seed=cfg.seed, epoch=epoch, max_length=cfg.max_length,
                            max_prompt_length=cfg.max_prompt_length)
        batches = batch_order([len(x) for x in data.input_ids], cfg.batch_size, seed=cfg.seed + rank, epoch=epoch)
        # Every rank must run the same number of steps (DDP), whatever its shard's skips.
        n_batches = int(_all_reduce([len(batches)], op="min")[0]) // cfg.grad_accum * cfg.grad_accum
        if n_batches == 0:
            raise ValueError(f"epoch {epoch}: fewer than grad_accum={cfg.grad_accum} batches per worker; "
                             f"{len(data.skipped)} of {len(examples)} examples skipped for max_length={cfg.max_length} / "
                             f"max_prompt_length={cfg.max_prompt_length}")
        skipped = _all_reduce([len(data.skipped), data.truncated])
        log_mlflow({"skipped_examples": skipped[0], "truncated_examples": skipped[1], "epoch": epoch}, step)
        bi = start_batch
        while bi < n_batches and step < cfg.max_steps:
            t0 = time.perf_counter()
            loss_sum, tokens = None, 0
            for micro in range(cfg.grad_accum):
                cpu_batch = collate(batches[bi], data, pad_id=tokenizer.pad_token_id)
                tokens += int(cpu_batch["attention_mask"].sum())  # counted on the host: no device sync
                batch = {k: (v.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else v)
                         for k, v in cpu_batch.items()}
                last = micro == cfg.grad_accum - 1
                sync = model.no_sync() if (world > 1 and not last and hasattr(model, "no_sync")) else contextlib.nullcontext()
                with sync, autocast():
                    out = model(**batch)  # mean over completion tokens (labels -100 elsewhere)
                    loss = (out if completion_only else out.loss) / cfg.grad_accum
                with sync:
                    loss.backward()
                loss_sum = loss.detach() if loss_sum is None else loss_sum + loss.detach()  # stays a tensor
                bi += 1
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            flush = step % cfg.log_every == 0 or step % cfg.checkpoint_every == 0 or step == cfg.max_steps
            if flush and device.type == "cuda":
                torch.cuda.synchronize()  # the flushed step's time then includes its queued GPU work
            now = time.perf_counter()
            # tokens and elapsed_seconds let a benchmark compute wall-clock throughput over any step range
            step_log.add(step=step, loss=loss_sum, grad_norm=grad_norm, tokens=tokens, seconds=now - t0,
                         learning_rate=scheduler.get_last_lr()[0], epoch=epoch, elapsed_seconds=now - loop_start)
            if not flush:
                continue
            for m in step_log.flush():  # every step is logged; the values travel every log_every steps
                log_mlflow({k: m[k] for k in ("loss", "tokens_per_second", "learning_rate", "grad_norm", "tokens",
                                              "elapsed_seconds")}, m["step"], timestamp_ms=m["time_ms"])
            log_mlflow({}, step, flush=True)
            metrics = {k: m[k] for k in ("loss", "tokens_per_second", "learning_rate", "grad_norm", "epoch", "step")}
            if rank == 0:  # one progress line per flush: the pipeline's output and `ray job logs` show training advance
                # sys.stdout.write, not print: Ray Train patches print to tee into its logger, which doubled each line.
                sys.stdout.write(f"[train] step {step}/{cfg.max_steps} loss {metrics['loss']:.3f} "
                                 f"{metrics['tokens_per_second']:.0f} tok/s lr {metrics['learning_rate']:.2e}\n")
                sys.stdout.flush()

            # --- checkpoint: rank 0 writes, every rank reports (report is a barrier) ---------------
            if step % cfg.checkpoint_every == 0 or step == cfg.max_steps:
                full_state = ckpt.model_state_dict(model, cfg.strategy)
                with tempfile.TemporaryDirectory(prefix="treasure-ckpt-") as tmp:
                    checkpoint = None
                    if rank == 0:
                        folder = Path(tmp)
                        ckpt.save_model(model, tokenizer, folder, state_dict=full_state)
                        ckpt.write_meta(folder, taxonomy=taxonomy, markers=cfg.markers,
                                        data_manifest_id=loop_config.get("data_manifest_id"),
                                        config=loop_config["train"], step=step,
                                        quality_ref=loop_config.get("quality_reference", {}))
                        adapter = ({k: v for k, v in ckpt.unwrapped(model).state_dict().items() if "lora_" in k}
                                   if cfg.lora.enabled else None)
                        ckpt.save_train_state(folder, optimizer=None if cfg.strategy == "fsdp" else optimizer,
                                              scheduler=scheduler, step=step, epoch=epoch, batch_in_epoch=bi,
                                              adapter=adapter)
                        checkpoint = ray.train.Checkpoint.from_directory(tmp)
                    ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=step_dir_name(step))
        epoch, start_batch = epoch + 1, 0
