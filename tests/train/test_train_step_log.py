"""StepLog (treasure.train.loop): per-step metrics kept as tensors and flushed in one go, without Ray."""

from __future__ import annotations

import math

import pytest
import torch
from ports import free_port

from treasure.train.loop import StepLog


def _add(log: StepLog, step: int, loss: float, tokens: int, seconds: float = 0.5, grad_norm: float = 1.0) -> None:
    log.add(step=step, loss=torch.tensor(loss), grad_norm=torch.tensor(grad_norm), tokens=tokens, seconds=seconds,
            learning_rate=1e-3 * step, epoch=0, elapsed_seconds=seconds * step)


def test_flush_returns_every_pending_step_in_order_then_nothing():
    log = StepLog(world=1)
    for s, loss in [(1, 3.0), (2, 2.5), (3, 2.25)]:
        _add(log, s, loss, tokens=100 * s)
    out = log.flush()
    assert [m["step"] for m in out] == [1, 2, 3]
    assert [m["loss"] for m in out] == [3.0, 2.5, 2.25]
    assert [m["tokens"] for m in out] == [100.0, 200.0, 300.0]
    assert [m["tokens_per_second"] for m in out] == [200.0, 400.0, 600.0]
    assert [m["learning_rate"] for m in out] == [1e-3, 2e-3, 3e-3]
    assert all(isinstance(m["loss"], float) and isinstance(m["grad_norm"], float) for m in out)
    assert log.flush() == []


def test_tensors_from_autograd_are_detached_not_kept_alive():
    w = torch.ones(3, requires_grad=True)
    loss = (w * 2).sum()
    log = StepLog(world=1)
    log.add(step=1, loss=loss, grad_norm=torch.tensor(0.1), tokens=1, seconds=1.0, learning_rate=0.1, epoch=0,
            elapsed_seconds=1.0)
    assert not log.pending[0]["loss"].requires_grad
    assert log.flush()[0]["loss"] == 6.0


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_loss_raises_naming_the_step(bad):
    log = StepLog(world=1)
    _add(log, 7, 2.0, tokens=10)
    _add(log, 8, bad, tokens=10)
    with pytest.raises(FloatingPointError, match="at step 8"):
        log.flush()


def _ddp_rank(rank: int, port: int, queue) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        log = StepLog(world=2)
        # rank 0: losses 1, 2; rank 1: losses 3, 4; tokens 10+r, 20+r
        _add(log, 1, 1.0 + 2 * rank, tokens=10 + rank)
        _add(log, 2, 2.0 + 2 * rank, tokens=20 + rank)
        queue.put((rank, [(m["loss"], m["tokens"]) for m in log.flush()]))
    finally:
        dist.destroy_process_group()


def test_two_ranks_average_loss_and_sum_tokens_in_one_flush():
    """A real gloo group of two processes: loss is the mean over ranks, tokens the sum, on every rank."""
    import torch.multiprocessing as mp

    port = free_port()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_ddp_rank, args=(r, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    got = dict(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert got[0] == got[1] == [(2.0, 21.0), (3.0, 41.0)]
    assert all(math.isfinite(x) for pairs in got.values() for pair in pairs for x in pair)
