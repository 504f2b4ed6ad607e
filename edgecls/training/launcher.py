"""Starting the training processes of one machine: `edgecls train ... --nproc N` runs torchrun
itself. This module loads torch's launcher only, not the training stack (timm and the loop load
in each started process), so the processes start a few seconds sooner."""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from uuid import uuid4

from edgecls.config import STORAGE_ENV
from edgecls.console import ERRORS_DIR_ENV
from edgecls.errors import UserError

USER_ERROR_STATUS = 2  # how the CLI exits on bad input


def under_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _errors_of_other_ranks(folder: str, nproc: int) -> list[str]:
    """The user errors that processes other than rank 0 left in `folder`, once each."""
    lines: dict[str, str] = {}
    for rank in range(1, nproc):
        path = os.path.join(folder, f"rank-{rank}.txt")
        if os.path.isfile(path):
            with open(path) as handle:
                lines.setdefault(handle.read(), f"(process {rank} of {nproc})")
    return [f"error: {where} {message}" for message, where in lines.items()]


def launch(nproc: int, argv: Sequence[str]) -> int:
    """Run `python -m edgecls ARGV` in `nproc` processes under torchrun on this machine; its
    exit status (a failed rank's own status when one fails: its message is already printed)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import elastic_launch
    from torch.distributed.run import config_from_args, get_args_parser

    if nproc < 2:
        raise UserError(f"--nproc must be 2 or more processes, got {nproc}")
    cores = os.cpu_count() or 1
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, cores // nproc)))
    storage = [a for a in argv if a.startswith("lr_search_storage=")]
    if storage:  # to the processes through their environment: `ps` shows their command lines
        os.environ[STORAGE_ENV] = storage[-1].split("=", 1)[1]
        argv = [a for a in argv if not a.startswith("lr_search_storage=")]
    rendezvous = ["--rdzv-backend=c10d", "--rdzv-endpoint=localhost:0", f"--rdzv-id={uuid4()}"]
    args = get_args_parser().parse_args(
        [*rendezvous, "--nnodes=1", f"--nproc-per-node={nproc}", "-m", "edgecls", *argv]
    )
    config, entrypoint, entry_args = config_from_args(args)
    logging.getLogger("torch.distributed.elastic").setLevel(logging.ERROR)
    errors = tempfile.TemporaryDirectory(prefix="edgecls-errors-")
    os.environ[ERRORS_DIR_ENV] = errors.name
    try:
        elastic_launch(config, entrypoint)(*entry_args)
    except ChildFailedError as failed:
        rank, first = failed.get_first_failure()
        if first.exitcode == USER_ERROR_STATUS:
            said = (
                failed.failures.get(0) is not None and failed.failures[0].exitcode == first.exitcode
            )
            for line in [] if said else _errors_of_other_ranks(errors.name, nproc):
                print(line, file=sys.stderr)  # rank 0 did not say it: the rank that met it did
            return USER_ERROR_STATUS
        how = (
            f"was killed ({first.signal_name()})"
            if first.exitcode < 0
            else f"failed (exit status {first.exitcode})"
        )
        print(
            f"error: training process {rank} of {nproc} {how}, and the others were stopped; "
            "the last checkpoint is intact: continue with edgecls train --resume RUN_FOLDER "
            "(the run folder printed above)",
            file=sys.stderr,
        )
        return 1
    return 0
