"""The resume state round-trips through the safe loader, and a tampered file cannot run code."""

from __future__ import annotations

import pickle

import pytest
import torch

from treasure.models.checkpoint import TRAIN_STATE
from treasure.train.resume import load_train_state, save_train_state


def test_resume_state_round_trips_with_weights_only(tmp_path):
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    sched.step()
    save_train_state(tmp_path, optimizer=opt, scheduler=sched, step=7, epoch=1, batch_in_epoch=3,
                     adapter={"w": torch.ones(2)})
    state = load_train_state(tmp_path)
    assert (state["step"], state["epoch"], state["batch_in_epoch"]) == (7, 1, 3)
    again = torch.optim.AdamW(model.parameters(), lr=1e-3)
    again.load_state_dict(state["optimizer"])
    assert torch.equal(again.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert torch.equal(state["adapter"]["w"], torch.ones(2))


class _Payload:
    def __reduce__(self):
        return (exec, ("open(__import__('os').environ['CANARY'], 'w').write('ran')",))


def test_a_tampered_resume_state_does_not_run_code(tmp_path, monkeypatch):
    canary = tmp_path / "canary"
    monkeypatch.setenv("CANARY", str(canary))
    with open(tmp_path / TRAIN_STATE, "wb") as f:
        pickle.dump({"step": 1, "evil": _Payload()}, f)
    with pytest.raises(pickle.UnpicklingError):
        load_train_state(tmp_path)
    assert not canary.exists()
