"""Training: the pipeline, its loop, schedules, optimizers, losses and augmentation.

Importing a submodule (a registry loads `schedules`, say) does not load the whole training stack:
`train`, `Trainer` and `RunState` are imported on first use.
"""

from typing import Any

_LAZY = {
    "train": "edgecls.training.pipeline",
    "Trainer": "edgecls.training.loop",
    "RunState": "edgecls.training.loop",
}

__all__ = ["RunState", "Trainer", "train"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_LAZY[name]), name)
