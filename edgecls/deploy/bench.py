"""`edgecls bench`: what a model costs on this CPU, per backend (paper 000, supplementary Table 5).

For each model and backend: parameters (M), GFLOPs at the input size (multiply-adds, as the
paper counts them), median latency over repeated runs after warm-up, and throughput. A model is a
timm name (random weights are fine for timing), an edgecls checkpoint or run folder, or an
exported .onnx / .xml file (timed on its own runtime only).
"""

from __future__ import annotations

import csv
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import timm
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from edgecls import runs
from edgecls.deploy.export import export_onnx, export_openvino, quantize_int8
from edgecls.deploy.runtime import ModelInfo, OnnxPredictor, OpenVINOPredictor, TorchPredictor
from edgecls.errors import UserError

BACKENDS = ("torch", "onnxruntime", "openvino")
PRECISIONS = ("fp32", "bf16", "int8")  # bf16 and int8: OpenVINO only


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
    """Each exported form of one model, made once and reused across backends and precisions."""

    def __init__(self, model: nn.Module, info: ModelInfo, folder: Path) -> None:
        self.model, self.info, self.folder = model, info, folder
        self.paths: dict[str, Path] = {}

    def path(self, kind: str) -> Path:
        if kind not in self.paths:
            if kind == "onnx":
                path = export_onnx(self.model, self.info, self.folder / "model.onnx")
            elif kind == "openvino":
                path = export_openvino(
                    self.path("onnx"), self.info, self.folder / "model.xml", False
                )
            else:
                calibration = torch.randint(
                    0,
                    256,
                    (32, self.info.channels, self.info.input_size, self.info.input_size),
                    dtype=torch.uint8,
                )
                path = quantize_int8(
                    self.path("openvino"), self.info, calibration, self.folder / "model_int8.xml"
                )
            self.paths[kind] = path
        return self.paths[kind]

    def predictor(self, backend: str, precision: str):
        if backend == "onnxruntime":
            return OnnxPredictor(self.path("onnx"))
        if precision == "bf16":  # the FP32 IR run at OpenVINO's bf16 inference precision
            return OpenVINOPredictor(self.path("openvino"), precision_hint="bf16")
        return OpenVINOPredictor(self.path("int8" if precision == "int8" else "openvino"))

    def file_mb(self, backend: str, precision: str) -> float:
        path = self.path(
            "onnx" if backend == "onnxruntime" else "int8" if precision == "int8" else "openvino"
        )
        return (
            sum(p.stat().st_size for p in (path, path.with_suffix(".bin")) if p.is_file()) / 2**20
        )


def cpu_has_bf16() -> bool:
    """Whether OpenVINO's CPU plugin computes in bf16 here (AVX-512 BF16 or AMX)."""
    from edgecls.deploy.runtime import openvino_core

    return "BF16" in openvino_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def check_choices(backends: list[str], precisions: list[str]) -> None:
    """Refuse names bench does not know, and INT8 without the one backend that runs it."""
    unknown = set(backends) - set(BACKENDS)
    if unknown:
        raise UserError(
            f"unknown backend(s) {', '.join(sorted(unknown))}: choose from {', '.join(BACKENDS)}"
        )
    unknown = set(precisions) - set(PRECISIONS)
    if unknown:
        raise UserError(
            f"unknown precision(s) {', '.join(sorted(unknown))}: "
            f"choose from {', '.join(PRECISIONS)}"
        )
    for low in {"int8", "bf16"} & set(precisions):
        if "openvino" not in backends:
            raise UserError(f"{low} is for OpenVINO only: add openvino to --backends")


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
    """Time one model on each backend and precision (INT8 is OpenVINO's only)."""
    check_choices(backends, precisions)
    path = Path(spec)
    if path.suffix in (".onnx", ".xml"):
        predictor = OnnxPredictor(path) if path.suffix == ".onnx" else OpenVINOPredictor(path)
        info = predictor.info
        pixels = np.random.rand(batch, info.channels, info.input_size, info.input_size)
        pixels = pixels.astype(np.float32)
        latency = time_runs(lambda: predictor.run(pixels), repeats, warmup)
        return [
            BenchRow(
                path.name,
                predictor.backend,
                info.precision,
                info.input_size,
                batch,
                None,
                None,
                latency,
                1000 * batch / latency,
            )
        ]
    model, info = _torch_model(spec, input_size, num_classes)
    size = info.input_size
    example = torch.rand(batch, info.channels, size, size)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    gflops = count_gflops(model, example)
    name = path.name if path.exists() else spec
    rows = []
    folder = tempfile.TemporaryDirectory()
    exports = _Exports(model, info, Path(folder.name))
    for backend in backends:
        for precision in precisions:
            if precision != "fp32" and backend != "openvino":
                continue
            if precision == "bf16" and not cpu_has_bf16():
                continue  # OpenVINO would silently run FP32
            if backend == "torch":
                channels_last = model.to(memory_format=torch.channels_last)
                pixels = example.contiguous(memory_format=torch.channels_last)

                @torch.inference_mode()
                def run(m=channels_last, x=pixels):
                    return m(x)

                latency = time_runs(run, repeats, warmup)
            else:
                exported = exports.predictor(backend, precision)
                pixels = example.numpy()
                latency = time_runs(lambda p=exported, x=pixels: p.run(x), repeats, warmup)
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
                    None if backend == "torch" else exports.file_mb(backend, precision),
                )
            )
    return rows


def format_table(rows: list[BenchRow]) -> str:
    header = (
        f"{'model':<26} {'backend':<12} {'prec':<5} {'size':>4} {'batch':>5} "
        f"{'GFLOPs':>7} {'params M':>8} {'file MB':>7} {'latency ms':>10} {'FPS':>9}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        gflops = f"{r.gflops:.3f}" if r.gflops is not None else "-"
        params = f"{r.params_m:.2f}" if r.params_m is not None else "-"
        size = f"{r.file_mb:.2f}" if r.file_mb is not None else "-"
        lines.append(
            f"{r.model:<26} {r.backend:<12} {r.precision:<5} {r.input_size:>4} {r.batch:>5} "
            f"{gflops:>7} {params:>8} {size:>7} {r.latency_ms:>10.2f} {r.fps:>9.1f}"
        )
    return "\n".join(lines)


def fastest_lines(rows: list[BenchRow]) -> list[str]:
    """Per model, the fastest backend and precision measured here. INT8 and bf16 change the
    answers: check the accuracy with `edgecls export --int8 --max-drop` before deploying."""
    lines = []
    for model in dict.fromkeys(r.model for r in rows):
        best = min((r for r in rows if r.model == model), key=lambda r: r.latency_ms)
        lines.append(
            f"fastest for {model} on this machine: {best.backend} {best.precision}, "
            f"{best.latency_ms:.2f} ms at batch {best.batch}"
            + ("" if best.precision == "fp32" else " (check its accuracy: export --max-drop)")
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
