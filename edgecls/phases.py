"""Where a run's wall time goes: named phases timed as they happen, written to metrics.json as
`phase_seconds` (benchmarks/ceiling.py splits a run's wall time with them)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


class Phases:
    """Seconds per phase of this process's run: startup (the interpreter and imports, when the
    process start is known), plan, load, audit (of the data), lr_search, setup, train (the
    training steps), validate, checkpoints (the end of each epoch: checkpoints, progress,
    trackers), evaluate (the best checkpoint), report, export."""

    def __init__(self, process_started: float | None = None) -> None:
        self.seconds: dict[str, float] = {}
        if process_started is not None:
            self.add("startup", time.monotonic() - process_started)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + max(0.0, seconds)

    @contextmanager
    def timing(self, name: str) -> Iterator[None]:
        begun = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - begun)

    def to_dict(self) -> dict[str, float]:
        return {name: round(seconds, 2) for name, seconds in self.seconds.items()}
