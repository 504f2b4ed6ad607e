"""`edgecls bench`: what a model costs on this CPU, per backend (paper 000, supplementary Table 5).

For each model, backend and precision: parameters (M), GFLOPs at the input size (multiply-adds,
as the paper counts them), exported file size, peak memory, median latency over repeated runs
after warm-up, throughput and, for a checkpoint, the top-1 each export loses on validation
images; then the fastest choice within an accuracy limit. A model is a timm name (random weights
are fine for timing), an edgecls checkpoint or run folder, or an exported file (timed on its own
runtime only).
"""

from __future__ import annotations

import csv
import importlib.util
import itertools
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import psutil
import timm
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from edgecls import runs
from edgecls.data import ImageSplit, load_configured_dataset
from edgecls.deploy.formats import (
    export_onnx,
    export_openvino,
    quantize_int8,
    quantize_onnx_int8,
)
from edgecls.deploy.mobile import CONVERTERS, export_ncnn, export_tflite, quantize_tflite
from edgecls.deploy.runtime import (
    ModelInfo,
    OpenVINOPredictor,
    Predictor,
    TorchPredictor,
    load_predictor,
)
from edgecls.errors import UserError

# What each backend runs, beside FP32; litert and ncnn run one image at a time, as on a device.
BACKEND_PRECISIONS = {
    "torch": ("fp32",),
    "onnxruntime": ("fp32", "int8"),
    "openvino": ("fp32", "bf16", "int8"),
    "litert": ("fp32", "int8"),
    "ncnn": ("fp32",),
}
BACKENDS = tuple(BACKEND_PRECISIONS)
PRECISIONS = ("fp32", "bf16", "int8")
CONVERTER_OF = {"litert": "tflite", "ncnn": "ncnn"}  # backends that need the mobile extra
ACCURACY_IMAGES = 500  # validation images a checkpoint's exports are scored on


@dataclass
class BenchRow:
    model: str
    backend: str
    precision: str
    input_size: int
    batch: int
    params_m: float | None
    gflops: float | None
    latency_ms: float
    fps: float
    file_mb: float | None = None  # the exported file (weights included); None for torch
    peak_memory_mb: float | None = None  # resident memory the runtime added while loading + running
    top1_drop: float | None = None  # checkpoints: points of top-1 lost on validation images


def count_gflops(model: nn.Module, example: torch.Tensor) -> float:
    """Multiply-adds of one image, in billions (FLOP counters count 2 per multiply-add)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(example[:1])
    return counter.get_total_flops() / 2 / 1e9


def time_runs(run: Callable[[], object], repeats: int, warmup: int) -> float:
    """Median wall time of `run` in milliseconds, after `warmup` untimed runs."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


class PeakMemory:
    """The highest resident memory of this process above where it stood on entry, sampled every
    few milliseconds by a thread (the OS's own peak counter never goes down between rows)."""

    def __init__(self) -> None:
        self.process = psutil.Process()
        self.peak_mb = 0.0

    def __enter__(self) -> PeakMemory:
        self.baseline = self.process.memory_info().rss
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        highest = self.baseline
        while not self.done.wait(0.002):
            highest = max(highest, self.process.memory_info().rss)
        self.peak_mb = max(0, highest - self.baseline) / 2**20

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join()


def _torch_model(spec: str, input_size: int, num_classes: int) -> tuple[nn.Module, ModelInfo]:
    path = Path(spec)
    if path.is_dir() or path.suffix == ".pt":
        predictor = TorchPredictor(path)
        return predictor.model, predictor.info
    if spec not in timm.list_models():
        raise UserError(f"'{spec}' is neither a model file nor a timm model name")
    model = timm.create_model(spec, num_classes=num_classes).eval()
    return model, ModelInfo([str(i) for i in range(num_classes)], input_size, grayscale=False)


class _Exports:
    """Each exported form of one model, made once and reused across backends and precisions.
    INT8 calibrates on training images for a checkpoint, on random pixels for a timm name."""

    def __init__(
        self, model: nn.Module, info: ModelInfo, folder: Path, calibration: torch.Tensor
    ) -> None:
        self.model, self.info, self.folder = model, info, folder
        self.calibration = calibration
        self.paths: dict[tuple[str, str], Path] = {}

    def path(self, backend: str, precision: str) -> Path:
        kind = (backend, "fp32" if precision == "bf16" else precision)
        if kind not in self.paths:
            self.paths[kind] = self._export(*kind)
        return self.paths[kind]

    def _export(self, backend: str, precision: str) -> Path:
        info, folder, calibration = self.info, self.folder, self.calibration
        if backend == "onnxruntime" and precision == "fp32":
            return export_onnx(self.model, info, folder / "model.onnx")
        if backend == "onnxruntime":
            return quantize_onnx_int8(
                self.path("onnxruntime", "fp32"), info, calibration, folder / "model_int8.onnx"
            )
        if backend == "openvino" and precision == "fp32":
            return export_openvino(
                self.path("onnxruntime", "fp32"), info, folder / "model.xml", False
            )
        if backend == "openvino":
            return quantize_int8(
                self.path("openvino", "fp32"), info, calibration, folder / "model_int8.xml"
            )
        if backend == "litert" and precision == "fp32":
            return export_tflite(self.model, info, folder / "model.tflite")
        if backend == "litert":
            return quantize_tflite(
                self.path("litert", "fp32"), info, calibration, folder / "model_int8.tflite"
            )
        return export_ncnn(self.model, info, folder / "model.ncnn.param")

    def predictor(self, backend: str, precision: str) -> Predictor:
        path = self.path(backend, precision)
        if backend == "openvino":  # bf16: the FP32 IR at OpenVINO's bf16 inference precision
            return OpenVINOPredictor(path, precision_hint="bf16" if precision == "bf16" else "f32")
        return load_predictor(path)

    def file_mb(self, backend: str, precision: str) -> float:
        path = self.path(backend, precision)
        companions = (path, path.with_suffix(".bin"))  # OpenVINO's and ncnn's weights
        return sum(p.stat().st_size for p in companions if p.is_file()) / 2**20


def cpu_has_bf16() -> bool:
    """Whether OpenVINO's CPU plugin computes in bf16 here (AVX-512 BF16 or AMX)."""
    from edgecls.deploy.runtime import openvino_core

    return "BF16" in openvino_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def installed_backends() -> list[str]:
    """The backends this machine can run: the mobile ones only with their extra installed."""
    found = []
    for backend in BACKENDS:
        fmt = CONVERTER_OF.get(backend)
        modules = CONVERTERS[fmt][0] if fmt else ()
        if all(importlib.util.find_spec(name) is not None for name in modules):
            found.append(backend)
    return found


def check_choices(backends: list[str], precisions: list[str]) -> None:
    """Refuse names bench does not know, a backend without its package, and a precision no
    chosen backend runs."""
    unknown = set(backends) - set(BACKENDS)
    if unknown:
        raise UserError(
            f"unknown backend(s) {', '.join(sorted(unknown))}: choose from {', '.join(BACKENDS)}"
        )
    missing = set(backends) - set(installed_backends())
    if missing:
        raise UserError(
            f"backend(s) {', '.join(sorted(missing))} need the mobile extra: "
            'pip install "edgecls[mobile]"'
        )
    unknown = set(precisions) - set(PRECISIONS)
    if unknown:
        raise UserError(
            f"unknown precision(s) {', '.join(sorted(unknown))}: "
            f"choose from {', '.join(PRECISIONS)}"
        )
    for precision in set(precisions) - {"fp32"}:
        if not any(precision in BACKEND_PRECISIONS[b] for b in backends):
            runners = [b for b, kinds in BACKEND_PRECISIONS.items() if precision in kinds]
            raise UserError(f"{precision} runs on {' or '.join(runners)}: add it to --backends")


def _checkpoint_data(spec: str) -> tuple[ImageSplit, ImageSplit] | None:
    """A checkpoint's training and validation images, when its data can still be loaded."""
    path = Path(spec)
    if not (path.is_dir() or path.suffix == ".pt"):
        return None
    try:
        dataset = load_configured_dataset(TorchPredictor(path).config, progress=False)
    except UserError:
        return None
    if not len(dataset.val) or not len(dataset.train):
        return None
    return dataset.train, dataset.val


def _top1(predictor: Predictor, split: ImageSplit) -> float:
    images = split.images[:ACCURACY_IMAGES]
    labels = split.labels[:ACCURACY_IMAGES].numpy()
    return float((predictor.predict_proba(images).argmax(1) == labels).mean())


EXPORTED_SUFFIXES = (".onnx", ".xml", ".tflite", ".param")


def bench_model(
    spec: str,
    backends: list[str],
    precisions: list[str],
    input_size: int = 224,
    batch: int = 1,
    repeats: int = 50,
    warmup: int = 10,
    num_classes: int = 1000,
) -> list[BenchRow]:
    """Time one model on each backend and precision it runs; a checkpoint whose data loads also
    gets each export's top-1 drop on its validation images."""
    check_choices(backends, precisions)
    path = Path(spec)
    if path.is_file() and path.suffix in EXPORTED_SUFFIXES:
        return [bench_exported(path, batch, repeats, warmup)]
    model, info = _torch_model(spec, input_size, num_classes)
    size = info.input_size
    example = torch.rand(batch, info.channels, size, size)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    gflops = count_gflops(model, example)
    name = path.name if path.exists() else spec
    data = _checkpoint_data(spec) if set(backends) - {"torch"} else None
    if data is not None:
        calibration = data[0].images[torch.randperm(len(data[0]))[:300]]
        reference = _top1(TorchPredictor(path), data[1])
    else:
        shape = (32, info.channels, size, size)
        calibration = torch.randint(0, 256, shape, dtype=torch.uint8)
    rows = []
    folder = tempfile.TemporaryDirectory()
    exports = _Exports(model, info, Path(folder.name), calibration)
    for backend, precision in itertools.product(backends, precisions):
        if precision not in BACKEND_PRECISIONS[backend]:
            continue
        if precision == "bf16" and not cpu_has_bf16():
            continue  # OpenVINO would silently run FP32
        if backend == "torch":
            latency, peak_mb = _time_torch(model, example, repeats, warmup)
            file_mb, drop = None, (0.0 if data is not None else None)
        else:
            exported, latency, peak_mb = _time_export(
                exports, backend, precision, example, repeats, warmup
            )
            file_mb = exports.file_mb(backend, precision)
            drop = 100 * (reference - _top1(exported, data[1])) if data is not None else None
        rows.append(
            BenchRow(
                name,
                backend,
                precision,
                size,
                batch,
                params,
                gflops,
                latency,
                1000 * batch / latency,
                file_mb,
                peak_mb,
                drop,
            )
        )
    return rows


def bench_exported(path: Path, batch: int, repeats: int, warmup: int) -> BenchRow:
    """An exported file, timed on its own runtime (loading it counts towards its memory)."""
    with PeakMemory() as memory:
        predictor = load_predictor(path)
        info = predictor.info
        pixels = np.random.rand(batch, info.channels, info.input_size, info.input_size)
        pixels = pixels.astype(np.float32)
        latency = time_runs(lambda: predictor.run(pixels), repeats, warmup)
    return BenchRow(
        path.name,
        predictor.backend,
        info.precision,
        info.input_size,
        batch,
        None,
        None,
        latency,
        1000 * batch / latency,
        peak_memory_mb=memory.peak_mb,
    )


def _time_torch(
    model: nn.Module, example: torch.Tensor, repeats: int, warmup: int
) -> tuple[float, float]:
    """Median latency (ms) and peak memory (MB) of the PyTorch model, channels-last."""
    channels_last = model.to(memory_format=torch.channels_last)
    pixels = example.contiguous(memory_format=torch.channels_last)

    @torch.inference_mode()
    def run() -> torch.Tensor:
        return channels_last(pixels)

    with PeakMemory() as memory:
        latency = time_runs(run, repeats, warmup)
    return latency, memory.peak_mb


def _time_export(
    exports: _Exports,
    backend: str,
    precision: str,
    example: torch.Tensor,
    repeats: int,
    warmup: int,
) -> tuple[Predictor, float, float]:
    """The export in its runtime, its median latency (ms) and the memory (MB) loading and
    running it added; the conversion happens before memory is counted."""
    exports.path(backend, precision)
    with PeakMemory() as memory:
        exported = exports.predictor(backend, precision)
        pixels = example.numpy()
        latency = time_runs(lambda: exported.run(pixels), repeats, warmup)
    return exported, latency, memory.peak_mb


def format_table(rows: list[BenchRow]) -> str:
    header = (
        f"{'model':<26} {'backend':<12} {'prec':<5} {'size':>4} {'batch':>5} "
        f"{'GFLOPs':>7} {'params M':>8} {'file MB':>7} {'peak MB':>7} {'latency ms':>10} "
        f"{'FPS':>9} {'top-1 drop':>10}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        gflops = f"{r.gflops:.3f}" if r.gflops is not None else "-"
        params = f"{r.params_m:.2f}" if r.params_m is not None else "-"
        size = f"{r.file_mb:.2f}" if r.file_mb is not None else "-"
        peak = f"{r.peak_memory_mb:.0f}" if r.peak_memory_mb is not None else "-"
        drop = f"{r.top1_drop:+.2f}" if r.top1_drop is not None else "-"
        lines.append(
            f"{r.model:<26} {r.backend:<12} {r.precision:<5} {r.input_size:>4} {r.batch:>5} "
            f"{gflops:>7} {params:>8} {size:>7} {peak:>7} {r.latency_ms:>10.2f} {r.fps:>9.1f} "
            f"{drop:>10}"
        )
    return "\n".join(lines)


def fastest_lines(rows: list[BenchRow], max_drop: float = 1.0) -> list[str]:
    """Per model, the fastest backend and precision measured here among those that lose at most
    `max_drop` points of top-1 (measured for checkpoints; for other models only FP32 counts,
    since a lower precision's accuracy is unknown)."""
    lines = []
    for model in dict.fromkeys(r.model for r in rows):
        mine = [r for r in rows if r.model == model]
        measured = any(r.top1_drop is not None for r in mine)
        allowed = [
            r
            for r in mine
            if (r.top1_drop is not None and r.top1_drop <= max_drop)
            or (not measured and r.precision == "fp32")
        ]
        if not allowed:
            lines.append(f"{model}: nothing measured here keeps top-1 within {max_drop:g} points")
            continue
        best = min(allowed, key=lambda r: r.latency_ms)
        why = (
            f"losing at most {max_drop:g} points of top-1 on validation images"
            if measured
            else "FP32 only: pass a checkpoint to score bf16 and int8"
        )
        lines.append(
            f"fastest for {model} on this machine: {best.backend} {best.precision}, "
            f"{best.latency_ms:.2f} ms at batch {best.batch} ({why})"
        )
    return lines


def save_rows(rows: list[BenchRow], out: Path) -> tuple[Path, Path]:
    """CSV and JSON side by side (out.csv, out.json)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = out.with_suffix(".csv"), out.with_suffix(".json")
    with open(csv_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(asdict(rows[0])))
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)
    runs.write_json(json_path, {"rows": [asdict(r) for r in rows]})
    return csv_path, json_path
