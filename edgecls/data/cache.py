"""The disk image cache: a folder's images decoded once, at the run's input size and channels,
into a memory-mapped uint8 file that every later run with the same fingerprint reuses.

Training then reads its batches from the map as it reads them from memory (the same arrays,
the same augmentation), so a dataset no longer has to fit in RAM. Pages read from the map are
dropped from the process whenever its mapped pages grew by RELEASE_BYTES, so a run's resident
memory does not grow with the dataset; the kernel keeps them in its page cache while memory allows.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import mmap
import os
import re
import time
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import psutil

from edgecls.console import progress_bar
from edgecls.data.decoding import DECODE_THREADS
from edgecls.data.images import BadImageError
from edgecls.errors import UserError

if TYPE_CHECKING:
    import torch

    Pixels = np.ndarray | torch.Tensor

CACHE_MODES = ("auto", "memory", "disk")
FORMAT_VERSION = 2  # part of every fingerprint: a new layout never reads an old file
SAMPLE_BLOCK = 4096  # bytes per block of a file's content in its fingerprint
# `cache=auto` decodes into memory when the images take less than this share of the free memory
# (training needs the rest: models, activations, the batch pipeline).
MEMORY_SHARE = 0.4
# Growth of the process's mapped file pages between two releases of the maps' pages. Measured,
# not counted from the bytes read: the kernel maps the neighbours of each page a read faults in,
# so shuffled reads leave more resident than they read (tests/test_cache.py checks the release).
RELEASE_BYTES = 256 * 2**20
CHUNK = 256  # images decoded between two flushes of the map and its status

# `cache=auto` keeps what it decoded into memory in the cache too, for the next run on the same
# files, while that takes less than this share of the disk's free space.
KEEP_SHARE = 0.05

PENDING, DECODED, UNREADABLE = 0, 1, 2


def default_cache_dir() -> Path:
    """$EDGECLS_CACHE_DIR, else the user's cache folder (XDG), never the data's own folder."""
    if os.environ.get("EDGECLS_CACHE_DIR"):
        return Path(os.environ["EDGECLS_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "edgecls" / "images"


def decoded_bytes(count: int, channels: int, input_size: int) -> int:
    return count * channels * input_size * input_size


def choose_cache(mode: str, count: int, channels: int, input_size: int) -> str:
    """memory or disk: `auto` keeps the decoded images in memory while they fit comfortably. The
    processes of a DDP run on this machine (torchrun's LOCAL_WORLD_SIZE) each hold their own
    copy: each gets its part of the share."""
    if mode != "auto":
        return mode
    processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    share = MEMORY_SHARE * psutil.virtual_memory().available / processes
    return "memory" if decoded_bytes(count, channels, input_size) < share else "disk"


def content_sample(file: Path) -> bytes:
    """The bytes a fingerprint reads of a file: all of a small one; of a large one, blocks at its
    start, middle and end (an edited image changes its header, its checksum or its length). A
    file that cannot be read gives its error: decoding will skip it and say why."""
    try:
        handle = open(file, "rb")  # noqa: SIM115 (closed below)
    except OSError as error:
        return f"unreadable: {error.errno}".encode()
    with handle:
        size = os.fstat(handle.fileno()).st_size
        if size <= 3 * SAMPLE_BLOCK:
            return handle.read()
        blocks = []
        for offset in (0, size // 2, size - SAMPLE_BLOCK):
            handle.seek(offset)
            blocks.append(handle.read(SAMPLE_BLOCK))
        return b"".join(blocks)


def fingerprint(
    files: list[Path], input_size: int, grayscale: bool, boxes: dict[Path, tuple] | None = None
) -> str:
    """What the decoded pixels depend on: each file's path, size, modification time and sampled
    content (a changed file gives a new fingerprint, even with its size and time kept), its box,
    the input size and the channels."""
    digest = hashlib.sha256(f"v{FORMAT_VERSION} {input_size} {grayscale}\n".encode())
    boxes = boxes or {}
    for file in files:
        stat = file.stat()
        digest.update(os.fsencode(os.path.abspath(file)))
        digest.update(f" {stat.st_size} {stat.st_mtime_ns} {boxes.get(file)}\n".encode())
        digest.update(hashlib.sha256(content_sample(file)).digest())
    return digest.hexdigest()[:24]


@dataclass(frozen=True)
class MapPlace:
    """Where a map lies in memory, and the folder the subsets of its images go to."""

    start: int
    size: int
    folder: Path


# Every open map (while an array uses it: each array of a map holds it), so that their pages
# can be released together, and an array (or a tensor of the same memory) known as a map's.
_OPEN_MAPS: weakref.WeakKeyDictionary[mmap.mmap, MapPlace] = weakref.WeakKeyDictionary()
_read_since_release = 0
_mapped_after_release = 0
PAGE_BYTES = mmap.PAGESIZE


def mapped_resident_bytes() -> int | None:
    """File pages mapped into this process (RssFile + RssShmem); None where /proc has no statm."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[2]) * PAGE_BYTES
    except (OSError, IndexError, ValueError):
        return None


def note_read(images: Pixels, source: Pixels) -> None:
    """After a batch read from `source`: once the mapped pages grew by RELEASE_BYTES (or, where
    they cannot be measured, that much was read), drop the maps' pages from this process
    (MADV_DONTNEED: they stay in the page cache, the file is untouched)."""
    global _read_since_release
    if not _OPEN_MAPS or map_of(source) is None:
        return
    _read_since_release += images.nbytes
    mapped = mapped_resident_bytes()
    grown = _read_since_release if mapped is None else mapped - _mapped_after_release
    if grown >= RELEASE_BYTES:
        release_pages()


def release_pages() -> None:
    global _read_since_release, _mapped_after_release
    for mapping in list(_OPEN_MAPS):
        if not mapping.closed:
            mapping.madvise(mmap.MADV_DONTNEED)
    _read_since_release = 0
    _mapped_after_release = mapped_resident_bytes() or 0


def _address(images: Pixels) -> int:
    if isinstance(images, np.ndarray):
        return images.__array_interface__["data"][0]
    return images.data_ptr()


def map_of(images: Pixels) -> mmap.mmap | None:
    """The open map whose memory `images` (an array, a view of one, or a tensor of the same
    memory) lie in, by address: a view is a map's as much as the whole."""
    if not _OPEN_MAPS or not len(images):
        return None
    address = _address(images)
    for mapping, place in list(_OPEN_MAPS.items()):
        if place.start <= address < place.start + place.size:
            return mapping
    return None


def mapped_subset(images: np.ndarray, rows: list[int] | np.ndarray) -> np.ndarray:
    """`images[rows]`: a view when the rows are one run (no copy); else of a mapped array a
    map of their own beside it (written once, reused like the cache), never all in memory."""
    rows = [int(r) for r in rows]
    if rows and rows == list(range(rows[0], rows[0] + len(rows))):
        return images[rows[0] : rows[0] + len(rows)]
    mapping = map_of(images)
    if mapping is None:
        return images[np.asarray(rows, dtype=np.int64)]
    return take_rows(images, rows, _OPEN_MAPS[mapping].folder)


def _free_bytes(folder: Path) -> int:
    """Free space of the disk `folder` is on (or would be on: its nearest existing parent)."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return psutil.disk_usage(str(folder)).free


def _too_little_space(folder: Path, needed: int) -> UserError:
    free = psutil.disk_usage(str(folder)).free
    return UserError(
        f"the image cache needs {needed / 2**30:.1f} GB more in {folder}, {free / 2**30:.1f} GB "
        "are free: set cache_dir=FOLDER elsewhere or cache=memory"
    )


def _reserve(path: Path, size: int) -> None:
    """The file at `size` bytes with its blocks allocated now: a full disk is a clear error here,
    not a SIGBUS (exit 135, no message) when a page of the map is first written."""
    with open(path, "wb") as handle:
        try:
            if size:
                os.posix_fallocate(handle.fileno(), 0, size)
            return
        except OSError as error:
            if error.errno == errno.ENOSPC:
                handle.truncate(0)
                raise _too_little_space(path.parent, size) from None
            if error.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise
        if size > psutil.disk_usage(str(path.parent)).free:  # no fallocate: checked, not held
            raise _too_little_space(path.parent, size)
        handle.truncate(size)


def open_map(path: Path, shape: tuple[int, ...], create: bool = False) -> np.ndarray:
    """A uint8 array of `shape` backed by the file at `path` (created at its full size, its
    space reserved on the disk)."""
    size = int(np.prod(shape))
    if create:
        _reserve(path, size)
    with open(path, "r+b") as handle:
        mapping = mmap.mmap(handle.fileno(), size) if size else None
    if mapping is None:
        return np.empty(shape, dtype=np.uint8)
    array = np.frombuffer(mapping, dtype=np.uint8).reshape(shape)  # holds the map open
    _OPEN_MAPS[mapping] = MapPlace(_address(array), size, path.parent)
    return array


def flush(images: np.ndarray) -> None:
    """The map behind `images` written to its file (an empty array has none)."""
    mapping = map_of(images)
    if mapping is not None:
        mapping.flush()


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """One process builds a cache at a time; another waits, then reuses what it built."""
    with open(folder / "lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@dataclass
class DiskCache:
    """The cache of one fingerprint: images.u8 (N, C, S, S) and status.u8 (one byte per image:
    pending, decoded or unreadable), both memory-mapped."""

    folder: Path
    shape: tuple[int, int, int, int]

    @classmethod
    def for_files(
        cls,
        files: list[Path],
        input_size: int,
        grayscale: bool,
        boxes: dict[Path, tuple] | None,
        cache_dir: str | Path | None,
        create: bool = True,
    ) -> DiskCache:
        root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        folder = root / fingerprint(files, input_size, grayscale, boxes)
        channels = 1 if grayscale else 3
        if not create:
            return cls(folder, (len(files), channels, input_size, input_size))
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(
                f"cannot create the image cache folder {folder} ({exc.strerror}): "
                "set cache_dir=FOLDER or cache=memory"
            ) from None
        return cls(folder, (len(files), channels, input_size, input_size))

    @property
    def complete(self) -> bool:
        return (self.folder / "complete.json").is_file()

    def build(
        self,
        files: list[Path],
        decode_one: Callable[[Path], np.ndarray | BadImageError],
        progress: bool,
    ) -> tuple[np.ndarray, list[BadImageError | None]]:
        """Decode the files not decoded yet (all of them the first time; the rest after an
        interrupted build) into the map; returns the images and, per file, its failure."""
        self._check_space()
        with _locked(self.folder):
            images_path, status_path = self.folder / "images.u8", self.folder / "status.u8"
            fresh = not status_path.is_file()
            images = open_map(images_path, self.shape, create=fresh)
            status = open_map(status_path, (len(files),), create=fresh)
            pending = np.flatnonzero(status == PENDING).tolist()
            failures: list[BadImageError | None] = [None] * len(files)
            if pending:
                self._decode_into(files, pending, decode_one, images, status, failures, progress)
            self._decode_again(files, decode_one, images, status, failures)
            (self.folder / "complete.json").write_text(json.dumps({"images": len(files)}))
            (self.folder / "last_used").write_text(f"{time.time()!r}\n")
        return images, failures

    def keep(self, images: np.ndarray, failures: list[BadImageError | None]) -> None:
        """Images decoded in memory (cache=auto) written as this entry, so that the next run on
        the same files maps them instead of decoding. Only while they take less than KEEP_SHARE
        of the disk's free space; a disk that cannot take them is no error: this run has them."""
        try:
            if self.complete or images.nbytes > KEEP_SHARE * _free_bytes(self.folder):
                return
            self.folder.mkdir(parents=True, exist_ok=True)
            with _locked(self.folder):
                if (self.folder / "status.u8").is_file():  # another run's build
                    return
                kept = open_map(self.folder / "images.u8", self.shape, create=True)
                kept[:] = images
                flush(kept)
                status = open_map(self.folder / "status.u8", (len(failures),), create=True)
                status[:] = [DECODED if failure is None else UNREADABLE for failure in failures]
                flush(status)
                (self.folder / "complete.json").write_text(json.dumps({"images": len(failures)}))
                (self.folder / "last_used").write_text(f"{time.time()!r}\n")
        except (OSError, UserError):
            return

    def _decode_again(
        self,
        files: list[Path],
        decode_one: Callable[[Path], np.ndarray | BadImageError],
        images: np.ndarray,
        status: np.ndarray,
        failures: list[BadImageError | None],
    ) -> None:
        """Files an earlier build could not read, read again: for the reason they are skipped,
        or, now readable, decoded into their row (never left to train as a black image)."""
        readable = []
        for i in np.flatnonzero(status == UNREADABLE).tolist():
            if failures[i] is not None:  # failed in this very build
                continue
            image = decode_one(files[i])
            if isinstance(image, BadImageError):
                failures[i] = image
            else:
                images[i] = image
                readable.append(i)
        self._commit(images, status, readable)

    def _decode_into(
        self,
        files: list[Path],
        pending: list[int],
        decode_one: Callable[[Path], np.ndarray | BadImageError],
        images: np.ndarray,
        status: np.ndarray,
        failures: list[BadImageError | None],
        progress: bool,
    ) -> None:
        done = len(files) - len(pending)
        label = "decoding images into the disk cache" + (f" ({done} done before)" if done else "")
        with ThreadPoolExecutor(max_workers=DECODE_THREADS) as pool:
            # A window of files at a time: an interrupted build waits for one window, not all.
            window = 4 * CHUNK
            windows = (pending[start : start + window] for start in range(0, len(pending), window))
            decoded = (
                pair
                for window in windows
                for pair in pool.map(lambda i: (i, decode_one(files[i])), window)
            )
            written: list[int] = []
            for i, image in progress_bar(decoded, len(pending), label, progress):
                if isinstance(image, BadImageError):
                    status[i], failures[i] = UNREADABLE, image
                    continue
                images[i] = image
                written.append(i)
                if len(written) == CHUNK:
                    self._commit(images, status, written)
                    written = []
            self._commit(images, status, written)

    @staticmethod
    def _commit(images: np.ndarray, status: np.ndarray, rows: list[int]) -> None:
        """Pixels reach the file before their status says so: an interrupted build resumes
        from the last commit and never trusts a half-written row."""
        flush(images)
        status[rows] = DECODED
        flush(status)
        release_pages()

    def _check_space(self) -> None:
        """Room for everything the run writes here: the images, and the train and validation
        subsets copied beside them (at most another copy). Each file reserves its own part."""
        if self.complete or (self.folder / "status.u8").is_file():
            return
        needed = 2 * int(np.prod(self.shape))
        if needed > psutil.disk_usage(str(self.folder)).free:
            raise _too_little_space(self.folder, needed)


def take_rows(images: np.ndarray, rows: list[int] | np.ndarray, folder: Path) -> np.ndarray:
    """`images[rows]` copied into a map of its own in `folder`, chunk by chunk (never all in
    memory); named after the rows, so the same subset is written once. Written under the cache's
    lock into a temporary file renamed when complete: a second process (a DDP rank, an LR-search
    worker) waits and maps the finished file, never truncates one being written."""
    rows = [int(r) for r in rows]
    if not rows:
        return np.empty((0, *images.shape[1:]), dtype=np.uint8)
    name = hashlib.sha256(np.asarray(rows, dtype=np.int64).tobytes()).hexdigest()[:16]
    shape = (len(rows), *images.shape[1:])
    path = folder / f"rows-{name}.u8"
    with _locked(folder):
        if not path.is_file():
            partial = folder / f"rows-{name}.u8.partial"
            subset = open_map(partial, shape, create=True)
            for start in range(0, len(rows), CHUNK):
                index = np.asarray(rows[start : start + CHUNK], dtype=np.int64)
                subset[start : start + len(index)] = images[index]
                release_pages()
            flush(subset)
            os.replace(partial, path)
            return subset
    return open_map(path, shape)


@dataclass(frozen=True)
class CacheEntry:
    """One fingerprint's folder in the cache: what `edgecls cache` lists and may remove."""

    folder: Path
    bytes: int
    images: int | None  # None: a build that did not finish
    last_used: float  # seconds since the epoch


def _is_entry(folder: Path) -> bool:
    """A folder this cache wrote: a fingerprint's name holding its status map."""
    return (
        folder.is_dir()
        and re.fullmatch(r"[0-9a-f]{24}", folder.name) is not None
        and (folder / "status.u8").is_file()
    )


def list_cache(cache_dir: str | Path | None = None) -> list[CacheEntry]:
    """The cache's entries, least recently used first."""
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    entries = []
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        if not _is_entry(folder):
            continue
        files = [f for f in folder.iterdir() if f.is_file()]
        complete = folder / "complete.json"
        used = folder / "last_used"
        entries.append(
            CacheEntry(
                folder,
                sum(f.stat().st_size for f in files),
                json.loads(complete.read_text())["images"] if complete.is_file() else None,
                float(used.read_text())
                if used.is_file()
                else max(f.stat().st_mtime for f in files),
            )
        )
    return sorted(entries, key=lambda entry: entry.last_used)


def remove_entry(entry: CacheEntry) -> bool:
    """Delete one entry unless a run is writing it (its lock is held; a run reading it keeps its
    open maps, which outlive the files); only the files this cache writes are removed, and the
    folder only when nothing else is in it. False: in use, left alone."""
    with open(entry.folder / "lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        for file in entry.folder.iterdir():
            if re.fullmatch(r"images\.u8|status\.u8|complete\.json|last_used|rows-.*", file.name):
                file.unlink()
    (entry.folder / "lock").unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # something else was put there: left with it
        entry.folder.rmdir()
    return True
