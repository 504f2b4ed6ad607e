"""ReduceLROnPlateauV2 and the cosine baseline on synthetic loss / accuracy sequences."""

import math

import pytest
import torch

from edgecls.training.loop import set_lr
from edgecls.training.schedules import CosineSchedule, ReduceLROnPlateauV2


def run(schedule, losses, top1s):
    """Drive a schedule through epochs; return the LR used at each epoch and the stop epoch."""
    lrs = []
    for epoch, (loss, top1) in enumerate(zip(losses, top1s, strict=True)):
        lrs.append(schedule.lr(epoch))
        if schedule.step(epoch, loss, top1):
            return lrs, epoch
    return lrs, None


def test_linear_warmup_lr_at_each_epoch():
    schedule = ReduceLROnPlateauV2(base_lr=0.01, max_epochs=100, warmup_epochs=5)
    lrs, _ = run(schedule, [1 / (e + 1) for e in range(7)], [0.5] * 7)
    assert lrs == pytest.approx([0.002, 0.004, 0.006, 0.008, 0.010, 0.010, 0.010])


def test_plateau_reductions_min_lr_and_early_stop():
    # Loss improves until epoch 9 (0-based), then stays flat; accuracy peaks at epoch 10.
    losses = [1 / (e + 1) for e in range(10)] + [0.1] * 90
    top1s = [e / 100 for e in range(11)] + [0.10] * 89
    schedule = ReduceLROnPlateauV2(base_lr=0.01, max_epochs=100, warmup_epochs=5, patience=5)
    lrs, stop_epoch = run(schedule, losses, top1s)
    # 5 flat epochs (10..14) -> reduce after 14; again after 19 and 24, the last clipped at min.
    assert lrs[14] == pytest.approx(0.01)
    assert lrs[15] == pytest.approx(0.001)
    assert lrs[20] == pytest.approx(0.0001)
    assert lrs[25] == pytest.approx(0.01 / 200)
    assert schedule.min_lr == pytest.approx(5e-5)
    # At min LR from epoch 25; top-1 hasn't improved since epoch 10: stop after 5 epochs at min.
    assert stop_epoch == 29
    assert min(lrs) == pytest.approx(5e-5)


def test_improving_accuracy_at_min_lr_postpones_stop():
    losses = [1 / (e + 1) for e in range(10)] + [0.1] * 90
    top1s = [0.1] * 27 + [0.9] + [0.9] * 72
    schedule = ReduceLROnPlateauV2(base_lr=0.01, max_epochs=100, warmup_epochs=5, patience=5)
    _, stop_epoch = run(schedule, losses, top1s)
    # Improvement at epoch 27 resets the count: epochs 28..32 without improvement.
    assert stop_epoch == 32


def test_forced_reduction_at_75_percent_of_max_epochs():
    losses = [1 / (e + 1) for e in range(20)]  # always improving: no plateau
    schedule = ReduceLROnPlateauV2(base_lr=0.1, max_epochs=20, warmup_epochs=2)
    lrs, stop_epoch = run(schedule, losses, [0.5] * 20)
    assert lrs[14] == pytest.approx(0.1)
    assert lrs[15] == pytest.approx(0.01)  # forced after epoch 15 of 20 (0-based 14)
    assert lrs[19] == pytest.approx(0.01)  # forced only once
    assert stop_epoch == 19  # max epochs


def test_no_forced_reduction_if_one_already_happened():
    # Improving to 0.1 at epoch 9, flat for 10..15 (one reduction after 14), improving again.
    losses = [1 / (e + 1) for e in range(10)] + [0.1] * 6 + [0.05 / e for e in range(16, 40)]
    schedule = ReduceLROnPlateauV2(base_lr=0.1, max_epochs=40, warmup_epochs=0, patience=5)
    lrs, stop_epoch = run(schedule, losses, [0.5] * 40)
    assert lrs[14] == pytest.approx(0.1)
    assert lrs[15] == pytest.approx(0.01)
    assert lrs[39] == pytest.approx(0.01)  # no second, forced, reduction at epoch 30
    assert stop_epoch == 39


def test_state_dict_round_trip_continues_identically():
    losses = [1 / (e + 1) for e in range(10)] + [0.1] * 30
    top1s = [0.5] * 40
    full = ReduceLROnPlateauV2(base_lr=0.01, max_epochs=40)
    expected, _ = run(full, losses, top1s)
    first = ReduceLROnPlateauV2(base_lr=0.01, max_epochs=40)
    lrs_a, _ = run(first, losses[:12], top1s[:12])
    second = ReduceLROnPlateauV2(base_lr=0.01, max_epochs=40)
    second.load_state_dict(first.state_dict())
    lrs_b = []
    for epoch in range(12, 40):
        lrs_b.append(second.lr(epoch))
        if second.step(epoch, losses[epoch], top1s[epoch]):
            break
    assert lrs_a + lrs_b == expected


def test_cosine_schedule():
    schedule = CosineSchedule(base_lr=0.1, max_epochs=25, warmup_epochs=5)
    assert schedule.lr(0) == pytest.approx(0.02)
    assert schedule.lr(5) == pytest.approx(0.1)
    assert schedule.lr(15) == pytest.approx(0.05)
    assert schedule.lr(24) == pytest.approx(0.05 * (1 + math.cos(math.pi * 19 / 20)))
    assert not schedule.step(23, 1.0, 0.5)
    assert schedule.step(24, 1.0, 0.5)


def test_every_parameter_group_follows_the_schedule_in_proportion():
    weight, bias = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.SGD([{"params": [weight]}, {"params": [bias], "lr_scale": 2.0}], lr=1)
    set_lr(optimizer, 0.01)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.01, 0.02])
