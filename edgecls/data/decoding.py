"""Decoding many image files in parallel: worker processes for many files, threads for few.

A small PNG costs PIL more Python per file than decoding, and threads serialise that on the
GIL: 20,000 Fashion-MNIST PNGs took 5.3 s in 2 threads and 1.9 s in 2 processes on a 2-core
machine (`python benchmarks/decoding.py`). Processes start from a server process, about 0.3 s
(`start_early` starts it while the caller does other work); folders of fewer than
PROCESS_MIN_FILES files keep to threads (4,000 PNGs: 1.2 s in threads, 0.67 s in processes with
the server started then, 0.4 s with it running).

Worker processes import the caller's `__main__` script again, as multiprocessing does: a script
calling `edgecls.train` at its top level, with no `if __name__ == "__main__":` guard, would run
again in each worker. Such scripts decode in threads.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import signal
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

PROCESS_MIN_FILES = 2000
# Files per task: with one task per small file, handing tasks out costs more than decoding.
DECODE_CHUNK = 64
DECODE_THREADS = min(8, os.cpu_count() or 1)  # PIL releases the GIL while it decodes

Decode = Callable[[Path], Any]
_worker_decode: Decode | None = None  # set once per worker process by _start_worker


def cores() -> int:
    """The cores this process may run on (a CPU affinity or a container's limit counts)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def decode_in_parallel(decode: Decode, files: list[Path]) -> Iterator[Any]:
    """`decode` of each file, in order. `decode` must be picklable (a module-level function or
    a partial of one): worker processes receive it once, then only lists of paths."""
    chunks = [files[start : start + DECODE_CHUNK] for start in range(0, len(files), DECODE_CHUNK)]
    workers = min(cores(), 8)
    if len(files) >= PROCESS_MIN_FILES and workers > 1 and workers_may_import_main():
        pool: Executor = ProcessPoolExecutor(
            workers,
            mp_context=_process_context(),
            initializer=_start_worker,
            initargs=(decode,),
        )
        task: Callable[[list[Path]], list[Any]] = _decode_in_worker
    else:
        pool, task = ThreadPoolExecutor(DECODE_THREADS), partial(_decode_chunk, decode)
    try:
        for decoded in pool.map(task, chunks):
            yield from decoded
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def workers_may_import_main() -> bool:
    """Whether worker processes can import `__main__` without side effects: it is a module (run
    with `python -m`, a console script's), absent (a notebook, `python -c`), or a script whose
    top level is guarded by `if __name__ == "__main__":`."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if getattr(main, "__spec__", None) is not None or path is None:
        return True
    try:
        source = Path(path).read_text(errors="replace")
    except OSError:
        return False
    return re.search(r"""__name__\s*==\s*["']__main__["']""", source) is not None


def start_early() -> None:
    """Start the server that worker processes fork from now, so that it has imported the decoder
    by the time a large folder is decoded (a run calls this before it loads torch)."""
    if (
        cores() > 1
        and workers_may_import_main()
        and _process_context().get_start_method() == "forkserver"
    ):
        from multiprocessing import forkserver

        forkserver.ensure_running()


def _process_context() -> multiprocessing.context.BaseContext:
    """forkserver where there is one: workers forked from a fresh server that has imported only
    the decoder, never from a process whose torch threads are running (fork with threads can
    deadlock the child)."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["edgecls.data.loader"])
    return context


def _start_worker(decode: Decode) -> None:
    # Ctrl-C is the parent's to handle: it stops the pool; a worker prints no traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    global _worker_decode
    _worker_decode = decode


def _decode_in_worker(files: list[Path]) -> list[Any]:
    assert _worker_decode is not None, "worker started without its decoder"
    return _decode_chunk(_worker_decode, files)


def _decode_chunk(decode: Decode, files: list[Path]) -> list[Any]:
    return [decode(file) for file in files]
