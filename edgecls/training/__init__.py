"""Training: the pipeline, its loop, schedules, optimizers, losses and augmentation."""

from edgecls.training.loop import RunState, Trainer
from edgecls.training.pipeline import train

__all__ = ["RunState", "Trainer", "train"]
