"""A progress bar on stderr for the slow per-file decoding loops (stdout stays for results)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import track

T = TypeVar("T")


def progress_bar(items: Iterable[T], total: int, description: str, enabled: bool) -> Iterator[T]:
    """Yield `items`, drawing a transient bar when `enabled`."""
    console = Console(stderr=True)
    yield from track(
        items,
        total=total,
        description=description,
        console=console,
        disable=not enabled,
        transient=True,
    )
