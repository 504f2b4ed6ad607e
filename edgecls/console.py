"""Progress bars for long work (rich), silent when asked to be."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    track,
)

console = Console(stderr=True)
# Where the processes of a local DDP launch leave the message of a user error for the launcher.
ERRORS_DIR_ENV = "EDGECLS_ERRORS_DIR"


@contextmanager
def progress_bars(enabled: bool = True) -> Iterator[Progress]:
    """A rich Progress with count, elapsed time and ETA; disabled bars still accept updates."""
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(bar_width=16),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(compact=True),
        TextColumn("{task.fields[status]}"),
        console=console,
        disable=not enabled,
        transient=False,
    )
    with progress:
        yield progress


def progress_bar(items: Iterable, total: int, description: str, enabled: bool) -> Iterator:
    """Yield `items` under a transient bar (for per-file loading loops)."""
    yield from track(
        items,
        total=total,
        description=description,
        console=console,
        disable=not enabled,
        transient=True,
    )


@contextmanager
def messages_off(off: bool = True) -> Iterator[None]:
    """No console output at all while inside (the Python API with progress=False)."""
    before = console.quiet
    console.quiet = off or before
    try:
        yield
    finally:
        console.quiet = before


def user_error_line(message: str) -> str | None:
    """What this process prints for a user error. Rank 0 (or a process alone) prints it. Another
    rank of a local launch leaves it for the launcher, which prints it when rank 0 did not meet
    the same problem; under an outside torchrun it prints it, naming itself."""
    rank = int(os.environ.get("RANK", "0"))
    if rank == 0:
        return message
    folder = os.environ.get(ERRORS_DIR_ENV)
    if folder and os.path.isdir(folder):
        with open(os.path.join(folder, f"rank-{rank}.txt"), "w") as handle:
            handle.write(message)
        return None
    return f"(process {rank}) {message}"
