"""Registries: the one place a trick, a schedule or an export format is named.

Each kind of choice has a `Registry` here, at the bottom of the package, that knows only its
kind and the module that fills it ("home"). The implementation registers itself beside its code
with a decorator (in the manner of timm's model registry):

    @SCHEDULES.register("cosine", "cosine decay to min_lr_ratio over max_epochs")
    class CosineSchedule: ...

so that the config's allowed values, the CLI's help and the docs all read the names from here,
and adding one touches one file. The home modules are imported on first use, so a registry can
be consulted by layers below the code it names.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from edgecls.errors import UserError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry:
    name: str
    value: Any
    help: str


class Registry:
    """Names of one kind (`kind` is the config key or option that picks one)."""

    def __init__(self, kind: str, *homes: str) -> None:
        self.kind = kind
        self.homes = homes
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, help: str) -> Callable[[T], T]:
        def add(value: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._entries[name] = Entry(name, value, help)
            return value

        return add

    def entries(self) -> dict[str, Entry]:
        for home in self.homes:
            importlib.import_module(home)
        return self._entries

    def names(self) -> tuple[str, ...]:
        return tuple(self.entries())

    def __contains__(self, name: object) -> bool:
        return name in self.entries()

    def __getitem__(self, name: str) -> Any:
        entries = self.entries()
        if name not in entries:
            close = difflib.get_close_matches(name, entries, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise UserError(f"unknown {self.kind} '{name}'{hint}; choose from {', '.join(entries)}")
        return entries[name].value


SCHEDULES = Registry("schedule", "edgecls.training.schedules")
BATCH_TRANSFORMS = Registry("batch transform", "edgecls.training.mixing")
AUGMENT_POLICIES = Registry("augment", "edgecls.training.augment", "edgecls.data.per_image")
OBJECTIVES = Registry("objective", "edgecls.training.losses")
OPTIMIZERS = Registry("optimizer", "edgecls.training.optim")
EXPORT_FORMATS = Registry("export format", "edgecls.deploy.export")
