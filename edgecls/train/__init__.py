"""Training: the pipeline, its loop, schedules, optimizers, losses and augmentation."""

from edgecls.train.loop import RunState, Trainer
from edgecls.train.pipeline import train

__all__ = ["RunState", "Trainer", "train"]
