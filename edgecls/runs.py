"""The run folder: everything a training run leaves behind, and how to read it back.

runs/<name>/
  config.yaml       the resolved configuration
  history.csv       one row per epoch
  metrics.json      final metrics of the best checkpoint
  best.pt, last.pt  checkpoints (model, optimizer, schedule, RNG states, config, class names)
  *.png             loss / accuracy / LR curves and the confusion matrix
  skipped_files.txt unreadable input files that were left out
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import re
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import yaml

from edgecls.config import Config
from edgecls.errors import UserError

# errno values meaning "the disk, the quota or the file-size limit is full".
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
HISTORY_COLUMNS = (
    "epoch",
    "lr",
    "train_loss",
    "val_loss",
    "val_top1",
    "val_top5",
    "val_map",
    "seconds",
)


def auto_run_dir(config: Config, root: Path = Path("runs"), prefix: str = "") -> Path:
    """runs/[<prefix>-]<data>-<model>-<timestamp>, made unique if that name is taken."""
    data = Path(config.data or "data").name or "data"
    name = f"{prefix}-{data}-{config.model}" if prefix else f"{data}-{config.model}"
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    candidate = root / f"{slug}-{stamp}"
    suffix = 1
    while candidate.exists():
        suffix += 1
        candidate = root / f"{slug}-{stamp}-{suffix}"
    return candidate


def check_run_dir_free(run_dir: Path, overwrite: bool) -> None:
    """Refuse to reuse a folder that holds files unless asked to (checked before any work)."""
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())) and not overwrite:
        raise UserError(
            f"run folder {run_dir} already holds files; choose another --run-dir, "
            "pass --overwrite, or continue it with --resume"
        )


def atomic_write_bytes(path: Path, write, *, when_full: str = "") -> None:
    """Write through a temporary file and rename, so an interrupted run never leaves half a file.

    A full disk (or quota, or file-size limit) is the user's to fix: it ends with one line, the
    old file untouched, plus `when_full` saying how to carry on.
    """
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        write(tmp)
        os.replace(tmp, path)
    except OSError as error:
        if error.errno not in DISK_FULL:
            raise
        raise UserError(f"no space left writing {path} ({error.strerror}){when_full}") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Serialised in memory and written by Python, so a full disk is an OSError that says so
    (torch's own file writer turns it into a RuntimeError about positions in a zip file)."""
    last = path.parent / "last.pt"
    kept = f"the last good checkpoint {last} is intact" if last.is_file() else "no checkpoint yet"

    def write(tmp: str) -> None:
        serialised = io.BytesIO()
        torch.save(state, serialised)
        Path(tmp).write_bytes(serialised.getbuffer())

    atomic_write_bytes(
        path,
        write,
        when_full=f"; {kept}; free space and continue with: edgecls train --resume {path.parent}",
    )


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint file, or the best checkpoint of a run folder."""
    path = Path(path)
    if path.is_dir():
        path = path / "best.pt"
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # torch raises many types for a damaged file
        raise UserError(f"cannot read checkpoint {path}: {error}") from None
    if not isinstance(state, dict) or "model" not in state or "classes" not in state:
        raise UserError(f"{path} is not an edgecls checkpoint")
    return state


def write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, lambda tmp: Path(tmp).write_text(text))


def write_config(run_dir: Path, config: Config) -> None:
    write_text(run_dir / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))


def check_folder_writable(folder: Path) -> None:
    """Refuse, before any work, a folder that cannot be made or written in: one that is a file,
    one under a file, or one whose nearest existing folder we may not write in."""
    existing = folder
    while not existing.exists():  # False too for a path under a file
        existing = existing.parent
    if not existing.is_dir():
        where = "it is not a folder" if existing == folder else f"{existing} is not a folder"
        raise UserError(f"cannot make folder {folder}: {where}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"cannot write in {existing}: permission denied")


def write_history(run_dir: Path, history: list[dict[str, float]]) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=HISTORY_COLUMNS)
            writer.writeheader()
            writer.writerows(history)

    atomic_write_bytes(run_dir / "history.csv", write)


def read_history(run_dir: Path) -> list[dict[str, float]]:
    with open(run_dir / "history.csv", newline="") as handle:
        return [
            {key: int(value) if key == "epoch" else float(value) for key, value in row.items()}
            for row in csv.DictReader(handle)
        ]


def write_json(path: Path, payload: dict[str, Any]) -> None:
    write_text(path, json.dumps(payload, indent=2) + "\n")
