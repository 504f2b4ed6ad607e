"""Decoding a folder's PNGs in threads against worker processes, alternating, same files.

    python benchmarks/decoding.py [FOLDER] [--rounds 3]

FOLDER defaults to Fashion-MNIST's 1,000 training images per class and its 10,000 test images
written as PNGs (benchmarks/fixed_costs.py's folder, 20,000 files). Prints seconds per round for
each way and the ratio of the medians.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

import edgecls.data.decoding as decoding
from edgecls.data.loader import decode_file


def decode_all(files: list[Path], processes: bool) -> float:
    decoding.PROCESS_MIN_FILES = 1 if processes else len(files) + 1
    decode = partial(decode_file, input_size=32, grayscale=True, boxes={})
    started = time.perf_counter()
    decoded = list(decoding.decode_in_parallel(decode, files))
    assert len(decoded) == len(files)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.folder
        if folder is None:
            from fixed_costs import make_folder

            folder = make_folder(Path(scratch) / "fashion20k")
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in {".png", ".jpg"})
        seconds: dict[str, list[float]] = {"threads": [], "processes": []}
        for round_ in range(args.rounds):
            for way in ("threads", "processes"):
                seconds[way].append(decode_all(files, way == "processes"))
                print(f"round {round_ + 1} {way}: {seconds[way][-1]:.2f} s", flush=True)
    threads, processes = (statistics.median(seconds[w]) for w in ("threads", "processes"))
    print(
        f"{len(files)} files, {decoding.cores()} cores: threads {threads:.2f} s, processes "
        f"{processes:.2f} s (median of {args.rounds}); processes {threads / processes:.2f}x"
    )


if __name__ == "__main__":
    main()
