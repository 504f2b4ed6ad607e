"""Early stopping on a validation metric, a switch of its own beside the LR schedule (paper 001
stops on validation loss). The plateau schedule's own stop rule (paper 000) stays in the schedule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from edgecls.config import Config
from edgecls.training.schedules import _SavedFields


@dataclass
class EarlyStopping(_SavedFields):
    monitor: str  # "val_loss" (lower is better) or "val_top1" (higher is better)
    patience: int
    best: float = math.inf  # of the monitored value, sign-flipped for top-1
    bad_epochs: int = 0

    def step(self, val_loss: float, val_top1: float) -> bool:
        """Record an epoch's validation; True once `patience` epochs in a row did not improve."""
        value = val_loss if self.monitor == "val_loss" else -val_top1
        if value < self.best:
            self.best, self.bad_epochs = value, 0
        else:
            self.bad_epochs += 1
        return self.bad_epochs >= self.patience


def create_early_stopping(config: Config) -> EarlyStopping | None:
    if config.early_stopping == "none":
        return None
    return EarlyStopping(config.early_stopping, config.early_stopping_patience)
