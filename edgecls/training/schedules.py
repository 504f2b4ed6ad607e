"""Epoch-level learning-rate schedules with linear warmup.

Every schedule answers two questions the training loop asks: which base LR to use for the coming
epoch (`lr`), and, after the epoch, whether to stop (`step`). Each is one registration in
`SCHEDULES`: a function of (config, time budget) that builds it. Parameter groups are scaled
from the base LR by the loop, so biases at 2x the LR stay at 2x through warmup and every reduction.

ReduceLROnPlateauV2 (paper 000, section 3.2) is written here because no library has it:
- warmup: epoch e (0-based) of `warmup_epochs` uses lr * (e + 1) / warmup_epochs;
- after warmup, if the average training loss has not improved (relative threshold 1e-4) for
  `patience` consecutive epochs, the LR is multiplied by `factor`, never below min_lr;
- if no reduction has happened once `forced_decay_at` of `max_epochs` have run (of the training
  time, in a budgeted run), one is forced;
- once the LR is at min_lr (= lr * min_lr_ratio) and validation top-1 has not beaten its best for
  `patience` consecutive epochs, training stops; it also stops at `max_epochs`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

from edgecls.config import Config
from edgecls.errors import UserError
from edgecls.registry import SCHEDULES


class _SavedFields:
    """Schedules are dataclasses: their fields are their state, except a shared TimeBudget,
    which the trainer owns and saves (a rollback must not give back the time it spent)."""

    def state_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "budget"}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)


def warmup_lr(base_lr: float, epoch: int, warmup_epochs: int) -> float | None:
    """The warmup LR for `epoch`, or None once warmup is over."""
    if epoch < warmup_epochs:
        return base_lr * (epoch + 1) / warmup_epochs
    return None


@dataclass
class TimeBudget(_SavedFields):
    """The training time a budgeted run has, and what its epochs have spent of it.

    The trainer records each epoch's measured time; schedules read it to place their decay, so a
    plan re-estimated after every epoch follows the machine: the next epoch is expected to take
    the mean so far, or the last one if epochs got slower (another job started)."""

    seconds: float  # the training time available
    spent: float = 0.0
    epochs_done: int = 0
    last_epoch_seconds: float = 0.0
    final_seconds: float = 0.0  # what the final evaluation after training will take

    @property
    def time_left(self) -> float:
        return max(0.0, self.seconds - self.spent - self.final_seconds)

    def next_epoch_seconds(self) -> float:
        return max(self.spent / max(1, self.epochs_done), self.last_epoch_seconds)

    def record(self, epoch: int, seconds: float) -> None:
        self.spent += seconds
        self.epochs_done = epoch + 1
        self.last_epoch_seconds = seconds

    def record_overhead(self, seconds: float) -> None:
        """Time an epoch costs beside training and validation (checkpoints, history): on tiny
        data it is a large share of the epoch, and the budget must count it."""
        self.spent += seconds
        self.last_epoch_seconds += seconds

    def fitting_epochs(self) -> int | None:
        """Epochs in all, done and still fitting; None before the first epoch is timed."""
        if not self.epochs_done:
            return None
        return self.epochs_done + int(self.time_left / self.next_epoch_seconds())

    def another_epoch_fits(self) -> bool:
        return self.time_left >= self.next_epoch_seconds()


@dataclass
class ReduceLROnPlateauV2(_SavedFields):
    base_lr: float
    max_epochs: int
    warmup_epochs: int = 5
    factor: float = 0.1
    patience: int = 5
    min_lr_ratio: float = 1 / 200
    forced_decay_at: float = 0.75
    threshold: float = 1e-4
    current_lr: float = 0.0
    best_loss: float = math.inf
    loss_bad_epochs: int = 0
    reductions: int = 0
    best_top1: float = -math.inf
    top1_bad_epochs_at_min: int = 0
    budget: TimeBudget | None = None  # a budgeted run: forced decay and stop by time

    def __post_init__(self) -> None:
        if not self.current_lr:
            self.current_lr = self.base_lr

    @property
    def min_lr(self) -> float:
        return self.base_lr * self.min_lr_ratio

    def lr(self, epoch: int) -> float:
        warm = warmup_lr(self.base_lr, epoch, self.warmup_epochs)
        return self.current_lr if warm is None else warm

    def _reduce(self) -> None:
        self.current_lr = max(self.current_lr * self.factor, self.min_lr)
        self.reductions += 1
        self.loss_bad_epochs = 0

    def step(
        self, epoch: int, train_loss: float, val_top1: float, val_loss: float = math.nan
    ) -> bool:
        """Record the finished epoch; return True when training should stop."""
        at_min_before = math.isclose(self.current_lr, self.min_lr) and epoch >= self.warmup_epochs
        if val_top1 > self.best_top1:
            self.best_top1 = val_top1
            self.top1_bad_epochs_at_min = 0
        elif at_min_before:
            self.top1_bad_epochs_at_min += 1
        if epoch >= self.warmup_epochs:
            if train_loss < self.best_loss * (1 - self.threshold):
                self.best_loss = train_loss
                self.loss_bad_epochs = 0
            else:
                self.loss_bad_epochs += 1
            if self.loss_bad_epochs >= self.patience and self.current_lr > self.min_lr:
                self._reduce()
            elif self.reductions == 0 and self._forced_decay_due(epoch):
                self._reduce()
        if at_min_before and self.top1_bad_epochs_at_min >= self.patience:
            return True
        return epoch + 1 >= self.max_epochs

    def _forced_decay_due(self, epoch: int) -> bool:
        """At `forced_decay_at` of the epochs, or of the training time when there is a budget."""
        if self.budget is not None:
            return self.budget.spent >= self.forced_decay_at * self.budget.seconds
        return epoch + 1 >= self.forced_decay_at * self.max_epochs


@dataclass
class ReduceLROnPlateau(_SavedFields):
    """torch's ReduceLROnPlateau as paper 001 uses it: the LR times `factor` once the validation
    loss has not improved by a relative `threshold` for more than `patience` epochs, never below
    min_lr. torch's own class sets the optimizer's LR itself; here the loop does, from `lr`, like
    every other schedule (biases keep their 2x, warmup comes first)."""

    base_lr: float
    max_epochs: int
    warmup_epochs: int = 0
    factor: float = 0.1
    patience: int = 5
    min_lr_ratio: float = 1e-4
    threshold: float = 1e-3
    current_lr: float = 0.0
    best_loss: float = math.inf
    bad_epochs: int = 0

    def __post_init__(self) -> None:
        if not self.current_lr:
            self.current_lr = self.base_lr

    def lr(self, epoch: int) -> float:
        warm = warmup_lr(self.base_lr, epoch, self.warmup_epochs)
        return self.current_lr if warm is None else warm

    def step(
        self, epoch: int, train_loss: float, val_top1: float, val_loss: float = math.nan
    ) -> bool:
        if epoch >= self.warmup_epochs:
            if val_loss < self.best_loss * (1 - self.threshold):
                self.best_loss, self.bad_epochs = val_loss, 0
            else:
                self.bad_epochs += 1
            if self.bad_epochs > self.patience:
                self.current_lr = max(
                    self.current_lr * self.factor, self.base_lr * self.min_lr_ratio
                )
                self.bad_epochs = 0
        return epoch + 1 >= self.max_epochs


@dataclass
class CosineSchedule(_SavedFields):
    """Fixed-length cosine decay to zero after warmup: the paper's baseline schedule."""

    base_lr: float
    max_epochs: int
    warmup_epochs: int = 5

    def lr(self, epoch: int) -> float:
        warm = warmup_lr(self.base_lr, epoch, self.warmup_epochs)
        if warm is not None:
            return warm
        progress = (epoch - self.warmup_epochs) / max(1, self.max_epochs - self.warmup_epochs)
        return 0.5 * self.base_lr * (1 + math.cos(math.pi * progress))

    def step(
        self, epoch: int, train_loss: float, val_top1: float, val_loss: float = math.nan
    ) -> bool:
        return epoch + 1 >= self.max_epochs


@dataclass
class ConstantSchedule(_SavedFields):
    """One LR for a fixed number of epochs: how LR-search trials train."""

    base_lr: float
    max_epochs: int

    def lr(self, epoch: int) -> float:
        return self.base_lr

    def step(
        self, epoch: int, train_loss: float, val_top1: float, val_loss: float = math.nan
    ) -> bool:
        return epoch + 1 >= self.max_epochs


@dataclass
class BudgetLinearSchedule(_SavedFields):
    """Warmup, then linear decay to zero at the end of a time budget (Li et al. 2020, "Budgeted
    Training": linear decay is the best schedule when the budget, not the epochs, is fixed).

    The number of epochs is re-estimated after every epoch from the measured epoch times, so the
    decay always ends with the budget; training stops when another epoch would not fit.
    """

    base_lr: float
    budget: TimeBudget
    warmup_epochs: int = 1
    max_epochs: int = 200

    def estimated_epochs(self) -> int | None:
        fit = self.budget.fitting_epochs()
        return None if fit is None else min(self.max_epochs, fit)

    def lr(self, epoch: int) -> float:
        warm = warmup_lr(self.base_lr, epoch, self.warmup_epochs)
        if warm is not None:
            return warm
        total = self.estimated_epochs()
        if total is None:
            return self.base_lr
        remaining = max(1, total - epoch)
        return self.base_lr * remaining / max(1, total - self.warmup_epochs)

    def step(
        self, epoch: int, train_loss: float, val_top1: float, val_loss: float = math.nan
    ) -> bool:
        return epoch + 1 >= self.max_epochs  # the trainer stops when the budget is spent


@dataclass
class FormulaSchedule(_SavedFields):
    """Warmup, then a closed-form decay (papers 001, 002, 004):
    - step: lr * gamma ** ((epoch - warmup) // step_epochs)
    - multistep: lr * gamma ** (number of milestones <= epoch)
    - poly: lr * (1 - (epoch - warmup) / (max_epochs - warmup)) ** power
    - exp: lr * gamma ** (epoch - warmup)
    """

    kind: str
    base_lr: float
    max_epochs: int
    warmup_epochs: int = 5
    gamma: float = 0.1
    step_epochs: int = 30
    milestones: list[int] = field(default_factory=list)
    power: float = 2.0

    def lr(self, epoch: int) -> float:
        warm = warmup_lr(self.base_lr, epoch, self.warmup_epochs)
        if warm is not None:
            return warm
        done = epoch - self.warmup_epochs
        if self.kind == "step":
            return self.base_lr * self.gamma ** (done // self.step_epochs)
        if self.kind == "multistep":
            return self.base_lr * self.gamma ** sum(epoch >= m for m in self.milestones)
        if self.kind == "poly":
            progress = done / max(1, self.max_epochs - self.warmup_epochs)
            return self.base_lr * max(0.0, 1 - progress) ** self.power
        return self.base_lr * self.gamma**done

    def step(
        self, epoch: int, train_loss: float, val_top1: float, val_loss: float = math.nan
    ) -> bool:
        return epoch + 1 >= self.max_epochs


class Schedule(Protocol):
    """What the training loop asks of a schedule (and a checkpoint saves)."""

    def lr(self, epoch: int) -> float: ...

    def step(
        self, epoch: int, train_loss: float, val_top1: float, val_loss: float = math.nan
    ) -> bool: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def _milestones(config: Config) -> list[int]:
    milestones = config.lr_milestones or []
    if not all(isinstance(m, int) and not isinstance(m, bool) and m > 0 for m in milestones) or (
        milestones != sorted(set(milestones))
    ):
        raise UserError(
            f"config key 'lr_milestones' must be a list of increasing epochs, got {milestones!r}"
        )
    if config.schedule == "multistep" and not milestones:
        raise UserError("schedule=multistep needs lr_milestones, e.g. lr_milestones=[30,60,90]")
    return milestones


def create_schedule(config: Config, budget: TimeBudget | None = None) -> Schedule:
    """The configured schedule; `budget` is the training time of a budgeted run, which the
    plateau schedule's forced decay and the linear decay follow."""
    if not isinstance(config.lr, float):
        raise ValueError(f"resolve the initial LR before scheduling, got {config.lr!r}")
    return SCHEDULES[config.schedule](config, budget)


@SCHEDULES.register(
    "plateau_v2",
    "warmup, LR x lr_factor when the training loss stalls, forced "
    "decay, stop at the minimum LR (paper 000's ReduceLROnPlateauV2)",
)
def _plateau_v2(config: Config, budget: TimeBudget | None) -> Schedule:
    return ReduceLROnPlateauV2(
        base_lr=config.lr,
        max_epochs=config.max_epochs,
        warmup_epochs=config.warmup_epochs,
        factor=config.lr_factor,
        patience=config.patience,
        min_lr_ratio=config.min_lr_ratio,
        forced_decay_at=config.forced_decay_at,
        budget=budget,
    )


@SCHEDULES.register("plateau", "warmup, then torch's ReduceLROnPlateau on the training loss")
def _plateau(config: Config, budget: TimeBudget | None) -> Schedule:
    return ReduceLROnPlateau(
        config.lr,
        config.max_epochs,
        config.warmup_epochs,
        factor=config.lr_factor,
        patience=config.patience,
        min_lr_ratio=config.min_lr_ratio,
    )


@SCHEDULES.register("cosine", "warmup, then cosine decay to 0 at max_epochs")
def _cosine(config: Config, budget: TimeBudget | None) -> Schedule:
    return CosineSchedule(config.lr, config.max_epochs, config.warmup_epochs)


@SCHEDULES.register("constant", "the same LR throughout")
def _constant(config: Config, budget: TimeBudget | None) -> Schedule:
    return ConstantSchedule(config.lr, config.max_epochs)


@SCHEDULES.register("budget_linear", "warmup, then linear decay to 0 at the end of time_budget")
def _budget_linear(config: Config, budget: TimeBudget | None) -> Schedule:
    if budget is None:
        raise UserError("schedule=budget_linear needs a time_budget (e.g. 5m)")
    return BudgetLinearSchedule(config.lr, budget, config.warmup_epochs, config.max_epochs)


def _formula(kind: str, config: Config) -> Schedule:
    return FormulaSchedule(
        kind,
        config.lr,
        config.max_epochs,
        config.warmup_epochs,
        gamma=config.lr_gamma,
        step_epochs=config.lr_step_epochs,
        milestones=_milestones(config),
        power=config.lr_power,
    )


@SCHEDULES.register("step", "warmup, then LR x lr_gamma every lr_step_epochs")
def _step(config: Config, budget: TimeBudget | None) -> Schedule:
    return _formula("step", config)


@SCHEDULES.register("multistep", "warmup, then LR x lr_gamma at each of lr_milestones")
def _multistep(config: Config, budget: TimeBudget | None) -> Schedule:
    return _formula("multistep", config)


@SCHEDULES.register("poly", "warmup, then LR x (1 - progress) ** lr_power")
def _poly(config: Config, budget: TimeBudget | None) -> Schedule:
    return _formula("poly", config)


@SCHEDULES.register("exp", "warmup, then LR x lr_gamma every epoch")
def _exp(config: Config, budget: TimeBudget | None) -> Schedule:
    return _formula("exp", config)
