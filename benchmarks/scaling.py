"""Past memory and past one process: peak resident memory and training speed of the memory and
disk image caches, on a synthetic folder of JPEGs generated on the fly; images/s of 1..N
training processes (DDP) and their accuracy against one process.

    python benchmarks/scaling.py                       # 50,000 images at 224 px: about 35 min
    python benchmarks/scaling.py --images 5000         # a quick look
    python benchmarks/scaling.py --processes-only      # the DDP part alone: about 10 min
    python benchmarks/scaling.py --caches-only         # all but the DDP part: about 25 min

1. `edgecls train DIR cache=disk` for one epoch of MobileNetV3-small at 224 px, from scratch:
   wall time, decode time and the process's peak resident memory (sampled every 10 ms).
2. The in-memory path decoding the same folder (`load_dataset(cache="memory")`): its peak.
3. Speed on data that fits: the same short run on a 5,000-image subset at 64 px, memory then
   disk, twice each in alternation (ABAB), compared by their training seconds.
4. Processes (`--nproc N`, 1..--processes): images trained per second on the same subset at 64 px
   with `batch_size` 64 per process; then the `digits` recipe at one global batch of 64 (1 x 64,
   N x 64/N) and the same seed, validation top-1 side by side.
Every edgecls run is a fresh process; memory is that process's RSS, children included.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

RESULTS = Path(__file__).parent / "results" / "scaling.md"
CLASSES = 10


def write_image(task: tuple[Path, int, int, int]) -> None:
    """A class-coloured gradient with noise, so that classes can be learnt."""
    folder, index, label, side = task
    rng = np.random.default_rng(index)
    ramp = np.linspace(0, 1, side, dtype=np.float32)
    hue = np.array([(label * 37) % 256, (label * 91) % 256, (label * 53) % 256], np.float32)
    pixels = hue * ramp[:, None, None] + rng.normal(0, 40, (side, side, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    image.save(folder / str(label) / f"{index}.jpg", quality=85)


def make_folder(root: Path, count: int, side: int = 256) -> Path:
    for label in range(CLASSES):
        (root / str(label)).mkdir(parents=True, exist_ok=True)
    tasks = [(root, i, i % CLASSES, side) for i in range(count)]
    with Pool(os.cpu_count()) as pool:
        pool.map(write_image, tasks, chunksize=256)
    return root


def run_measured(command: list[str]) -> dict:
    """Run a command; its wall time and the peak RSS of it and its children."""
    started = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak, done = 0, threading.Event()

    def sample() -> None:
        nonlocal peak
        watched = psutil.Process(process.pid)
        while not done.wait(0.01):
            try:
                members = [watched, *watched.children(recursive=True)]
                peak = max(peak, sum(p.memory_info().rss for p in members))
            except psutil.Error:
                pass

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    _, stderr = process.communicate()
    done.set()
    thread.join()
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{stderr.decode()[-3000:]}")
    return {"wall": time.monotonic() - started, "peak_gb": peak / 2**30}


def train(data: Path, run: Path, settings: list[str]) -> dict:
    command = [sys.executable, "-m", "edgecls", "train", str(data), "--run-dir", str(run)]
    result = run_measured([*command, "--quiet", *settings])
    metrics = json.loads((run / "metrics.json").read_text())
    result["train_seconds"] = metrics["train_seconds"]
    result["val_top1"] = metrics["val"]["top1"] if "val" in metrics else metrics["val_top1"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=50_000)
    parser.add_argument("--subset", type=int, default=5_000, help="images of the speed check")
    parser.add_argument("--processes", type=int, default=2, help="up to N training processes")
    parser.add_argument("--processes-only", action="store_true", help="only part 4")
    parser.add_argument("--caches-only", action="store_true", help="parts 1 to 3, not part 4")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    model = ["model=mobilenetv3_small_100", "pretrained=false", "lr=0.05", "workers=0"]
    if args.processes_only:
        with tempfile.TemporaryDirectory() as tmp:
            lines = processes(Path(tmp), args, model)
        out = args.out.with_name("scaling_processes.md")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        started = time.monotonic()
        big = make_folder(root / "big", args.images)
        print(f"wrote {args.images} JPEGs in {time.monotonic() - started:.0f} s", flush=True)
        cache = f"cache_dir={root / 'cache'}"
        one_epoch = [*model, "input_size=224", "max_epochs=1", "time_budget=2h"]
        disk = train(big, root / "run-disk", [*one_epoch, "cache=disk", cache])
        print("disk", json.dumps(disk), flush=True)
        memory_decode = run_measured(
            [sys.executable, "-c", "from edgecls.data import load_dataset; "
             f"load_dataset({str(big)!r}, input_size=224, cache='memory', progress=False)"]
        )  # fmt: skip
        print("memory decode", json.dumps(memory_decode), flush=True)
        decoded_gb = args.images * 3 * 224 * 224 / 2**30

        small = make_folder(root / "small", args.subset, side=64)
        short = [*model, "input_size=64", "max_epochs=3", cache]
        speed: dict[str, list[float]] = {"memory": [], "disk": []}
        train(small, root / "warm", [*short, "cache=disk"])  # builds the subset's cache once
        for repeat in range(2):
            for mode in ("memory", "disk"):
                result = train(small, root / f"{mode}{repeat}", [*short, f"cache={mode}"])
                speed[mode].append(result["train_seconds"])
                print(mode, json.dumps(result), flush=True)
        process_lines = [] if args.caches_only else processes(root, args, model)
    ratio = sum(speed["memory"]) / sum(speed["disk"])
    lines = [
        f"`python benchmarks/scaling.py --images {args.images}` (2-core CPU, MobileNetV3-small "
        "from scratch, batch and eval batch as the plan chooses, no loader workers).",
        "",
        "| run | decoded images | peak resident memory | wall |",
        "|---|---|---|---|",
        f"| `edgecls train` 1 epoch at 224 px, `cache=disk` (decode included) | "
        f"{decoded_gb:.1f} GiB | {disk['peak_gb']:.2f} GiB | {disk['wall']:.0f} s |",
        f"| decoding the same folder into memory (`cache=memory`), nothing else | "
        f"{decoded_gb:.1f} GiB | {memory_decode['peak_gb']:.2f} GiB | "
        f"{memory_decode['wall']:.0f} s |",
        "",
        f"Training speed on {args.subset} images at 64 px, 3 epochs, ABAB: memory "
        f"{' / '.join(f'{s:.1f}' for s in speed['memory'])} s, disk "
        f"{' / '.join(f'{s:.1f}' for s in speed['disk'])} s: the disk cache runs at "
        f"{100 * ratio:.0f}% of the in-memory speed.",
        "",
        *process_lines,
    ]
    table = "\n".join(lines)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table + "\n")
    print(table)


def processes(root: Path, args: argparse.Namespace, model: list[str]) -> list[str]:
    """Part 4: images/s of 1..N processes, then N processes against one at the same global
    batch."""
    small = root / "small"
    if not small.exists():
        make_folder(small, args.subset, side=64)
    counts = range(1, args.processes + 1)
    epochs = 3
    lines = [
        f"`python benchmarks/scaling.py --processes {args.processes}`: {args.subset} images at "
        f"64 px, {epochs} epochs, batch_size 64 per process, in memory (train_seconds includes "
        "each epoch's validation):",
        "",
        "| processes | training images/s | wall |",
        "|---|---|---|",
    ]
    for count in counts:
        settings = [*model, "input_size=64", f"max_epochs={epochs}", "cache=memory"]
        nproc = ["--nproc", str(count)] if count > 1 else []
        result = train(small, root / f"speed{count}", [*settings, *nproc])
        trained = json.loads((root / f"speed{count}" / "metrics.json").read_text())["num_train"]
        rate = trained * epochs / result["train_seconds"]
        print("processes", count, json.dumps(result), flush=True)
        lines.append(f"| {count} | {rate:.0f} | {result['wall']:.0f} s |")
    lines += [
        "",
        "The `digits` recipe (60 epochs, seed 0) at one global batch of 64:",
        "",
        "| processes | batch_size per process | sync_bn | val top-1 | epochs | wall |",
        "|---|---|---|---|---|---|",
    ]
    n = args.processes
    for count, sync in [(1, False), (n, False), (n, True)]:
        run = root / f"digits{count}{sync}"
        nproc = ["--nproc", str(count), f"sync_bn={str(sync).lower()}"] if count > 1 else []
        command = [sys.executable, "-m", "edgecls", "train", "--recipe", "digits", "--quiet"]
        result = run_measured(
            [*command, "--run-dir", str(run), *nproc, f"batch_size={64 // count}"]
        )
        metrics = json.loads((run / "metrics.json").read_text())
        print("digits", count, sync, json.dumps(result), flush=True)
        lines.append(
            f"| {count} | {64 // count} | {'yes' if sync else 'no'} | "
            f"{100 * metrics['val_top1']:.2f}% | {metrics['epochs_trained']} | "
            f"{result['wall']:.0f} s |"
        )
    return lines


if __name__ == "__main__":
    main()
