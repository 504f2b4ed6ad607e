"""`edgecls export`: a trained checkpoint written in one of the EXPORT_FORMATS (ONNX, OpenVINO IR,
TorchScript and timm's folder in deploy/formats.py and deploy/timm_folder.py, TFLite, ncnn and
Core ML in deploy/mobile.py), then checked against the checkpoint.

The exported graph holds the normalization and a softmax, takes float32 pixels in [0, 1] with a
dynamic batch dimension, and has its metadata (classes, input size, preprocessing) in a JSON file
beside it (and, for ONNX, in the file itself). ONNX is written at opset 17 by default, in
operator forms that lagging runtimes read correctly. After export the model is compared with
the checkpoint on the validation split of the training data: the share of identical top-1
predictions, the largest probability difference, and for INT8 the top-1 drop against FP32 are
printed and saved beside the model; an ONNX file is run in every installed runtime, and one that
disagrees is reported loudly.
"""

from __future__ import annotations

import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgecls import runs
from edgecls.data import Dataset, ImageSplit, load_configured_dataset, to_float

# The other formats register themselves on import, ONNX's family first (mobile and timm_folder
# import it), then mobile's and timm's folder: the order EXPORT_FORMATS lists them in.
from edgecls.deploy import mobile, timm_folder  # noqa: F401
from edgecls.deploy.formats import DEFAULT_OPSET, ExportFormat, ExportJob, Written
from edgecls.deploy.runtime import (
    OnnxPredictor,
    OpenVINOPredictor,
    Predictor,
    TorchPredictor,
    load_predictor,
)
from edgecls.errors import UserError
from edgecls.registry import EXPORT_FORMATS

PRECISIONS = ("fp32", "fp16", "int8")


@dataclass
class ExportReport:
    path: str
    format: str
    precision: str
    checked_on: str | None = None
    num_images: int = 0
    top1_agreement: float | None = None  # share of identical top-1 predictions vs the checkpoint
    max_probability_difference: float | None = None
    top1: float | None = None
    checkpoint_top1: float | None = None
    fp32_top1: float | None = None  # INT8 only: the FP32 export's top-1 on the same images
    int8_top1_drop: float | None = None  # percentage points
    calibration_images: int | None = None
    per_class_drop: dict[str, float] = field(default_factory=dict)  # INT8: points per class
    max_drop: float | None = None  # INT8: the limit asked for, in points of top-1
    fallback: str | None = None  # INT8 over max_drop: the FP32 model to deploy instead
    opset: int | None = None  # ONNX only
    runtimes: dict[str, float] = field(default_factory=dict)  # ONNX: agreement per runtime
    latency_ms: float | None = None  # median batch-1 latency of the export here (its runtime)
    notes: list[str] = field(default_factory=list)


MIN_AGREEMENT = 0.99  # top-1 agreement with the checkpoint below which a runtime is reported


# OpenCV runs in a child process: a lagging runtime that crashes on a file must not take edgecls
# (or a test session) down with it.
OPENCV_SCRIPT = """
import sys, numpy as np, cv2
net = cv2.dnn.readNetFromONNX(sys.argv[1])
pixels = np.load(sys.argv[2])
out = []
for start in range(0, len(pixels), 64):
    net.setInput(np.ascontiguousarray(pixels[start:start + 64]))
    out.append(net.forward())
np.save(sys.argv[3], np.concatenate(out))
"""


def opencv_probabilities(path: Path, images: torch.Tensor) -> np.ndarray | str:
    """OpenCV DNN's probabilities for uint8 `images`, or why it could not give them."""
    with tempfile.TemporaryDirectory() as folder:
        pixels, out = Path(folder) / "pixels.npy", Path(folder) / "out.npy"
        np.save(pixels, to_float(images).numpy())
        command = [sys.executable, "-c", OPENCV_SCRIPT, str(path), str(pixels), str(out)]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0 or not out.is_file():
            lines = result.stderr.strip().splitlines()
            return lines[-1] if lines else f"exit status {result.returncode}"
        return np.load(out)


def onnx_runtimes(path: Path) -> dict[str, Predictor]:
    """The ONNX file in every in-process runtime installed here that reads ONNX."""
    return {"onnxruntime": OnnxPredictor(path), "openvino": OpenVINOPredictor(path)}


def per_class_top1(probabilities: np.ndarray, labels: torch.Tensor, classes: list[str]):
    """Top-1 of each class (its recall) on the images of that class."""
    predicted, truth = probabilities.argmax(1), labels.numpy()
    return {
        name: float((predicted[truth == index] == index).mean())
        for index, name in enumerate(classes)
        if (truth == index).any()
    }


def calibration_subset(split: ImageSplit, size: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(split), generator=generator)[:size]
    return split.images[order]


def _top1(probabilities: np.ndarray, labels: torch.Tensor) -> float:
    return float((probabilities.argmax(1) == labels.numpy()).mean())


LATENCY_RUNS = 20


def batch1_latency(predictor: Predictor, split: ImageSplit) -> float:
    """Median milliseconds for one image, after a few warm-up runs: the export report's latency
    (`edgecls bench` measures more carefully, with repeats, batches and backends)."""
    pixels = to_float(split.images[:1]).numpy()
    for _ in range(3):
        predictor.run(pixels)
    times = []
    for _ in range(LATENCY_RUNS):
        started = time.perf_counter()
        predictor.run(pixels)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def compare(
    exported: Predictor, reference: np.ndarray, split: ImageSplit, report: ExportReport
) -> np.ndarray:
    """Fill `report` with the exported model's agreement with the checkpoint on `split`."""
    probabilities = exported.predict_proba(split.images)
    report.num_images = len(split)
    report.top1_agreement = float((probabilities.argmax(1) == reference.argmax(1)).mean())
    report.max_probability_difference = float(np.abs(probabilities - reference).max())
    report.top1 = _top1(probabilities, split.labels)
    report.checkpoint_top1 = _top1(reference, split.labels)
    return probabilities


def check_runtimes(
    path: Path, reference: np.ndarray, split: ImageSplit, report: ExportReport
) -> None:
    """Top-1 agreement with the checkpoint of the ONNX file in every installed runtime; one
    below MIN_AGREEMENT gets a note in capitals, since it would fail silently on a device."""
    answers = {name: p.predict_proba(split.images) for name, p in onnx_runtimes(path).items()}
    if importlib.util.find_spec("cv2") is not None:
        answers["opencv"] = opencv_probabilities(path, split.images)
    for name, probabilities in answers.items():
        if isinstance(probabilities, str):
            report.notes.append(f"WARNING: {name} FAILED on this file: {probabilities}")
            continue
        agreement = float((probabilities.argmax(1) == reference.argmax(1)).mean())
        report.runtimes[name] = agreement
        if agreement < MIN_AGREEMENT:
            report.notes.append(
                f"WARNING: {name} DISAGREES with the checkpoint on {1 - agreement:.1%} of the "
                f"images: do not deploy this file to {name} (try another --opset)"
            )


def export_model(
    model_path: Path,
    fmt: str,
    precision: str = "fp32",
    out_dir: Path | None = None,
    data: str | None = None,
    calibration_size: int = 300,
    seed: int = 0,
    opset: int = DEFAULT_OPSET,
    max_drop: float | None = None,
) -> ExportReport:
    """Export a checkpoint (or a run folder's best.pt) and check the result against it. INT8
    with `max_drop` (points of top-1) keeps the drop within it, or falls back to FP32."""
    exporter = chosen_format(fmt, precision)
    source = TorchPredictor(model_path)
    dataset = _checking_data(source, data, precision, max_drop)
    run_dir = model_path if model_path.is_dir() else model_path.parent
    int8 = precision == "int8"
    job = ExportJob(
        source.model,
        source.config,
        source.info,
        precision,
        folder=out_dir or run_dir / "export",
        opset=opset,
        calibration=calibration_subset(dataset.train, calibration_size, seed) if int8 else None,
        validation=dataset.val if dataset is not None else None,
        max_drop=max_drop,
    )
    written = exporter.write(job)
    report = ExportReport(str(written.path), fmt, precision, opset=opset if fmt == "onnx" else None)
    if dataset is None or not len(dataset.val):
        report.notes.append("no validation data found: predictions were not compared")
    elif (reason := exporter.not_run_here()) is not None:
        report.notes.append(reason)
    else:
        report.checked_on = f"{data or source.config.data} (validation split)"
        check_export(report, exporter, written, source, job)
    runs.write_json(report_path(written.path), asdict(report))
    return report


def chosen_format(fmt: str, precision: str) -> ExportFormat:
    """The registered format, refused before anything is loaded when it cannot write
    `precision` or its converter is not installed."""
    exporter: ExportFormat = EXPORT_FORMATS[fmt]()
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision '{precision}': choose {', '.join(PRECISIONS)}")
    if precision not in exporter.precisions:
        others = [
            e.name for e in EXPORT_FORMATS.entries().values() if precision in e.value.precisions
        ]
        raise UserError(f"{fmt} export has no {precision}: use --format {' or '.join(others)}")
    exporter.check()
    return exporter


def _checking_data(
    source: TorchPredictor, data: str | None, precision: str, max_drop: float | None
) -> Dataset | None:
    """The checkpoint's data (or `data`): INT8 calibrates on its training split, and the export
    is checked on its validation split. Only INT8 cannot do without it; data the user named
    must load (the check is skipped, and said, only when the checkpoint's own data is gone)."""
    try:
        dataset = load_configured_dataset(source.config, data, progress=False)
    except UserError as error:
        if precision == "int8":
            raise UserError(
                f"INT8 needs calibration data and it could not be loaded: {error}"
            ) from None
        if data is not None:
            raise UserError(f"--data {data} could not be loaded: {error}") from None
        dataset = None
    if precision == "int8" and (dataset is None or not len(dataset.train)):
        raise UserError("INT8 needs calibration data: pass --data DATA (the training data)")
    if max_drop is not None and (precision != "int8" or dataset is None or not len(dataset.val)):
        raise UserError("--max-drop is for --int8 exports, and needs validation data to measure")
    return dataset


def check_export(
    report: ExportReport,
    exporter: ExportFormat,
    written: Written,
    source: TorchPredictor,
    job: ExportJob,
) -> None:
    """Fill `report` with the written model's agreement with the checkpoint on the validation
    split, its latency here, and for ONNX each runtime's agreement, for INT8 its drop."""
    split = job.validation
    reference = source.predict_proba(split.images)
    exported = exporter.predictor(written.path)
    probabilities = compare(exported, reference, split, report)
    report.latency_ms = batch1_latency(exported, split)
    if report.format == "onnx" and job.precision == "fp32":
        check_runtimes(written.path, reference, split, report)
    if job.precision == "int8":
        report.calibration_images = len(job.calibration)
        fp32 = load_predictor(written.fp32_path)
        int8_drop(report, probabilities, fp32, split, job.info.classes)
        if job.max_drop is not None:
            within_drop(report, written.fp32_path, job.max_drop, exporter.controls_drop)


def int8_drop(
    report: ExportReport,
    int8_probabilities: np.ndarray,
    fp32: Predictor,
    split: ImageSplit,
    classes: list[str],
) -> None:
    """The INT8 model's top-1 drop against its FP32 model, overall and per class, in points."""
    fp32_probabilities = fp32.predict_proba(split.images)
    report.fp32_top1 = _top1(fp32_probabilities, split.labels)
    report.int8_top1_drop = 100 * (report.fp32_top1 - report.top1)
    before = per_class_top1(fp32_probabilities, split.labels, classes)
    after = per_class_top1(int8_probabilities, split.labels, classes)
    report.per_class_drop = {k: round(100 * (before[k] - after[k]), 2) for k in before}


def within_drop(report: ExportReport, fp32_path: Path, max_drop: float, controlled: bool) -> None:
    """Over `max_drop` points, the FP32 model is the one to deploy, said in the report."""
    report.max_drop = max_drop
    if report.int8_top1_drop > max_drop:
        report.fallback = str(fp32_path)
        control = " even with NNCF's accuracy control" if controlled else ""
        report.notes.append(
            f"INT8 lost {report.int8_top1_drop:.2f} points of top-1, more than "
            f"--max-drop {max_drop:g}{control}: deploy the FP32 model "
            f"{report.fallback} instead"
        )


def report_path(model_path: Path) -> Path:
    """`<file name with dots as underscores>_report.json` beside the export: one per file, so an
    ONNX, TorchScript and TFLite export in one folder keep their own."""
    return model_path.with_name(model_path.name.replace(".", "_") + "_report.json")


def report_lines(report: ExportReport) -> list[str]:
    """The export summary a person reads."""
    lines = [f"exported {report.format} {report.precision}: {report.path}"]
    if report.top1_agreement is not None:
        lines.append(
            f"on {report.num_images} images of {report.checked_on}: top-1 agreement with the "
            f"checkpoint {report.top1_agreement:.2%}, max probability difference "
            f"{report.max_probability_difference:.2e}, top-1 {report.top1:.2%} "
            f"(checkpoint {report.checkpoint_top1:.2%}); batch-1 latency here "
            f"{report.latency_ms:.2f} ms"
        )
    if report.runtimes:
        lines.append(
            f"ONNX opset {report.opset}, top-1 agreement per runtime: "
            + ", ".join(f"{name} {share:.2%}" for name, share in report.runtimes.items())
        )
    if report.int8_top1_drop is not None:
        worst = sorted(report.per_class_drop.items(), key=lambda item: -item[1])[:3]
        lines.append(
            "largest per-class drops: " + ", ".join(f"{name} {drop:+.1f}" for name, drop in worst)
        )
        lines.append(
            f"INT8 top-1 {report.top1:.2%} vs FP32 {report.fp32_top1:.2%}: drop "
            f"{report.int8_top1_drop:.2f} percentage points "
            f"({report.calibration_images} calibration images)"
        )
    lines += report.notes
    return lines


def export_after_training(run_dir: Path, formats: list[str]) -> list[dict[str, Any]]:
    """`export=onnx,openvino` at the end of `edgecls train`: FP32 exports of best.pt."""
    return [asdict(export_model(run_dir, fmt)) for fmt in formats]
