"""Training: the loop, its schedules and augmentation."""

from edgecls.train.loop import RunState, Trainer, train

__all__ = ["RunState", "Trainer", "train"]
