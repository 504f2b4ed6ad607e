"""Run the edgecls CLI and SIGKILL it at a chosen moment (for the resume tests).

    python tests/kill_harness.py POINT N edgecls-arguments...

POINT is where to count: `step` (training updates of the run), `trial-step` (updates inside
LR-search trials), `checkpoint` (checkpoint files written to a temporary name, before the rename
that would publish them). The process kills itself at the N-th such event, as a power cut or
`kill -9` would, without running any cleanup.
"""

import os
import signal
import sys

import torch

from edgecls import runs
from edgecls.cli import main
from edgecls.training.loop import Trainer

point, limit, arguments = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
count = 0


def tick() -> None:
    global count
    count += 1
    if count >= limit:
        os.kill(os.getpid(), signal.SIGKILL)


step = Trainer.step


def counted_step(self, images, labels):
    if (point == "step") == (self.run_dir is not None):
        tick()
    return step(self, images, labels)


def save_then_tick(state, path):
    torch.save(state, path)
    tick()


if point in ("step", "trial-step"):
    Trainer.step = counted_step
elif point == "checkpoint":
    runs.save_checkpoint = lambda state, path: runs.atomic_write_bytes(
        path, lambda tmp: save_then_tick(state, tmp)
    )
else:
    raise SystemExit(f"unknown kill point {point}")
main(arguments)
