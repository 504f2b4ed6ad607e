"""The run folder: everything a training run leaves behind, and how to read it back.

runs/<name>/
  config.yaml       the resolved configuration
  history.csv       one row per epoch
  metrics.json      final metrics of the best checkpoint
  best.pt, last.pt  checkpoints (model, optimizer, schedule, RNG states, config, class names)
  *.png             loss / accuracy / LR curves and the confusion matrix
  skipped_files.txt unreadable input files that were left out
  .edgecls.lock     held by the process training into the folder
"""

from __future__ import annotations

import csv
import errno
import fcntl
import io
import itertools
import json
import os
import pickle
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from edgecls.config import Config
from edgecls.errors import UserError
from edgecls.redact import redact

# errno values meaning "the disk, the quota or the file-size limit is full".
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
LOCK_FILE = ".edgecls.lock"
# Files only an edgecls run writes: a folder holding config.yaml and one of them is a run folder.
RUN_FILES = ("history.csv", "last.pt", "best.pt", "metrics.json", "lr_search.db", LOCK_FILE)


def is_run_folder(path: Path) -> bool:
    """True for a folder an edgecls run wrote or is writing (never mistaken for a class)."""
    if (path / LOCK_FILE).is_file():
        return True
    return (path / "config.yaml").is_file() and any((path / name).exists() for name in RUN_FILES)


def holds_run_folders(path: Path) -> bool:
    """The folder itself is a run, or directly holds runs (like `runs/`)."""
    try:
        if is_run_folder(path):
            return True
        with os.scandir(path) as children:  # entries know their type: no stat per file
            return any(child.is_dir() and is_run_folder(Path(child.path)) for child in children)
    except OSError:
        return False


def _run_names(config: Config, root: Path, prefix: str) -> Iterator[Path]:
    data = Path(config.data or "data").name or "data"
    name = f"{prefix}-{data}-{config.model}" if prefix else f"{data}-{config.model}"
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:100]  # a file name holds 255 bytes
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    yield root / f"{slug}-{stamp}"
    for suffix in itertools.count(2):
        yield root / f"{slug}-{stamp}-{suffix}"


def auto_run_dir(config: Config, root: Path = Path("runs"), prefix: str = "") -> Path:
    """runs/[<prefix>-]<data>-<model>-<timestamp>, made unique if that name is taken."""
    return next(path for path in _run_names(config, root, prefix) if not path.exists())


def _make_dir(path: Path, exist_ok: bool) -> None:
    try:
        path.mkdir(parents=True, exist_ok=exist_ok)
    except FileExistsError:
        if exist_ok:  # mkdir says "exists" for a file of that name
            raise UserError(f"run folder {path} exists and is not a folder") from None
        raise
    except OSError as error:
        raise UserError(f"cannot create run folder {path}: {error.strerror or error}") from None


def _create_unique(config: Config) -> Path:
    """Choose and create a new run folder in one step, so two runs never share a name."""
    for path in _run_names(config, Path("runs"), ""):
        try:
            _make_dir(path, exist_ok=False)
            return path
        except FileExistsError:
            continue
    raise AssertionError("unreachable")


def _lock(run_dir: Path) -> int:
    """An exclusive lock held until the process ends; names the holder when taken."""
    try:
        fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as error:
        raise UserError(f"cannot write to run folder {run_dir}: {error.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 64).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise UserError(
            f"run folder {run_dir} is in use by process {holder} (another edgecls train); "
            "wait for it to finish or choose another --run-dir"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _clear(run_dir: Path) -> None:
    """--overwrite: empty an earlier run's folder (and only a run folder) but for the lock."""
    earlier_run = (run_dir / "config.yaml").is_file() and any(
        (run_dir / name).exists() for name in RUN_FILES if name != LOCK_FILE
    )
    if not earlier_run:
        raise UserError(
            f"refusing to empty {run_dir} for --overwrite: it holds files but no edgecls run"
        )
    for entry in run_dir.iterdir():
        if entry.name == LOCK_FILE:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def remove_stale_temp_files(run_dir: Path) -> None:
    """Temporary files of a write that a killed process never finished."""
    for path in run_dir.glob(".*.tmp"):
        path.unlink(missing_ok=True)


@contextmanager
def claim_run_dir(
    run_dir: Path | None, config: Config, *, overwrite: bool = False, resume: bool = False
) -> Iterator[Path]:
    """The run folder, created atomically and locked for the whole run.

    A new run needs an empty folder (or --overwrite of an earlier run's); a resumed one its
    config.yaml. A folder this call created is removed again if the run fails before writing
    anything, so a typo leaves nothing behind.
    """
    parent = run_dir.parent if run_dir else Path("runs")
    new_parent = not parent.exists()
    if run_dir is None:
        run_dir, created = _create_unique(config), True
    else:
        created = not run_dir.exists()
        _make_dir(run_dir, exist_ok=True)
    fd = _lock(run_dir)
    try:
        content = [p for p in run_dir.iterdir() if p.name != LOCK_FILE]
        if resume and not (run_dir / "config.yaml").is_file():
            raise UserError(f"no config.yaml in {run_dir}: nothing to resume")
        if not resume and content:
            if not overwrite:
                raise UserError(
                    f"run folder {run_dir} already holds files; choose another --run-dir, "
                    "pass --overwrite, or continue it with --resume"
                )
            _clear(run_dir)
        remove_stale_temp_files(run_dir)
        yield run_dir
    except BaseException:
        if created and all(p.name == LOCK_FILE for p in run_dir.iterdir()):
            shutil.rmtree(run_dir, ignore_errors=True)
            if new_parent and not any(parent.iterdir()):
                parent.rmdir()
        raise
    finally:
        os.close(fd)


def process_started() -> float:
    """When this process started, on the time.monotonic() clock (a time budget counts the
    interpreter's start-up and imports too)."""
    import psutil

    age = time.time() - psutil.Process().create_time()
    return time.monotonic() - max(0.0, age)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, write, *, when_full: str = "") -> None:
    """Write through a temporary file, fsync, rename, fsync the folder: a crash at any moment
    leaves the old file or the new one, never half a file. Permissions follow the umask.

    A full disk (or quota, or file-size limit) is the user's to fix: it ends with one line, the
    old file untouched, plus `when_full` saying how to carry on.
    """
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files
        os.replace(tmp, path)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
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

    import torch

    def write(tmp: str) -> None:
        serialised = io.BytesIO()
        torch.save(redact(state), serialised)
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
    import torch

    try:
        # weights_only: a checkpoint is data; unpickling anything else could run code.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "unsupported global" not in str(error).lower():
            raise UserError(f"cannot read checkpoint {path}: not a checkpoint file") from None
        raise UserError(
            f"refusing to load {path}: it holds objects other than tensors and plain data "
            "(not written by this edgecls, or crafted to run code)"
        ) from None
    except Exception as error:  # torch raises many types for a damaged file
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise UserError(
            f"cannot read checkpoint {path}: {first_line or type(error).__name__}"
        ) from None
    if not isinstance(state, dict) or "model" not in state or "classes" not in state:
        raise UserError(f"{path} is not an edgecls checkpoint")
    return state


def remove_own_output(path: Path, written_by_edgecls: bool) -> None:
    """An earlier export at `path` is removed before it is written anew; anything else there is
    refused and left as it is: edgecls never deletes what it did not write."""
    if not path.exists() and not path.is_symlink():
        return
    if not written_by_edgecls or path.is_symlink():
        raise UserError(
            f"{path} exists and edgecls did not write it: choose another --out, or move it away"
        )
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()


def write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, lambda tmp: Path(tmp).write_text(text))


def saved_config(config: Config) -> dict[str, Any]:
    """The config as config.yaml and checkpoints keep it: any password redacted."""
    return redact(config.to_dict())


def write_config(run_dir: Path, config: Config) -> None:
    write_text(run_dir / "config.yaml", yaml.safe_dump(saved_config(config), sort_keys=False))


def read_config(run_dir: Path) -> dict[str, Any]:
    """The saved config of a run, checked to be a mapping (a resume starts from it)."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise UserError(f"no config.yaml in {run_dir}: nothing to resume")
    try:
        values = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        first_line = str(error).splitlines()[0]
        raise UserError(f"{path} is not valid YAML ({first_line}): cannot resume") from None
    if not isinstance(values, dict) or not values:
        raise UserError(f"{path} is empty or not a mapping of key: value: cannot resume")
    return values


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
            writer = csv.DictWriter(handle, fieldnames=list(history[0]) if history else [])
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
    write_text(path, json.dumps(redact(payload), indent=2) + "\n")


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise UserError(f"cannot read {path}: {error}") from None


# metrics.json's `stopped_by`, as the summary says it.
STOP_REASONS = {
    "max_epochs": "max_epochs: every planned epoch trained",
    "time_budget": "the time budget: the next epoch would not fit",
    "early_stopping": "early stopping: validation stopped improving",
    "schedule": "the LR schedule: it reached its lowest LR",
}


def stopped_by_row(metrics: dict[str, Any]) -> tuple[str, str]:
    """The summary's row for what ended the run, so a budget's end does not read as early
    stopping (a run from before `stopped_by` was recorded says only whether it ended early)."""
    if "stopped_by" in metrics:
        return "stopped by", STOP_REASONS[metrics["stopped_by"]]
    return "stopped early", "yes" if metrics["stopped_early"] else "no (max epochs)"


def kept_epoch_row(metrics: dict[str, Any]) -> tuple[str, str]:
    """The summary's row for the epoch best.pt holds: the best on validation, or the last under
    keep_epoch=last (a run from before the key was recorded kept its best)."""
    trained = f"{metrics['best_epoch']} of {metrics['epochs_trained']} trained"
    if metrics.get("keep_epoch") == "last":
        return "kept epoch", f"{trained} (the last: keep_epoch=last)"
    return "best epoch", trained
