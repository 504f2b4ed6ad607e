"""`edgecls export`: a trained checkpoint to ONNX, OpenVINO IR (FP32, FP16, INT8), TorchScript,
TFLite (FP32, INT8), ncnn or Core ML (FP32, FP16; the last three in deploy/mobile.py), checked.

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

import dataclasses
import importlib.util
import logging
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgecls import runs
from edgecls.data import ImageSplit, load_configured_dataset, to_float
from edgecls.deploy.hub import TimmFolderPredictor, export_timm
from edgecls.deploy.mobile import (
    CONVERTERS,
    export_coreml,
    export_ncnn,
    export_tflite,
    quantize_tflite,
    require_converter,
)
from edgecls.deploy.runtime import (
    ONNX_METADATA_KEY,
    TORCHSCRIPT_METADATA,
    ModelInfo,
    OnnxPredictor,
    OpenVINOPredictor,
    Predictor,
    TorchPredictor,
    WithSoftmax,
    coreml_runs_here,
    load_predictor,
    metadata_path,
    openvino_core,
)
from edgecls.errors import UserError

FORMATS = ("onnx", "openvino", "torchscript", "tflite", "ncnn", "coreml", "timm")
PRECISIONS = ("fp32", "fp16", "int8")
FORMAT_PRECISIONS = {  # what each format exports, beside FP32
    "onnx": ("int8",),
    "openvino": ("fp16", "int8"),
    "tflite": ("int8",),
    "coreml": ("fp16",),
}


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


DEFAULT_OPSET = 17  # the lowest that represents these models; OpenCV 5 misreads opset 20 forms
# Validation images NNCF's accuracy control ranks each quantized layer on (its default is 300).
# Ranking is the slow part: on the digits model its 64 layers took 39 s on 300 images, 27 s on 100
# (recompiling each candidate is most of it), and the same layer was reverted. The chosen model is
# still checked on the whole validation split.
INT8_RANKING_IMAGES = 100
# Layers reverted to floating point one at a time at most (NNCF's default: no limit); past it the
# drop decides as always (FP32 is the fallback). Each costs a validation pass: on the digits model
# with a 1.7-point INT8 drop, the unbounded restorer ran 200 s in the test suite.
INT8_MAX_REVERTS = 8
MIN_AGREEMENT = 0.99  # top-1 agreement with the checkpoint below which a runtime is reported


def export_onnx(model: nn.Module, info: ModelInfo, path: Path, opset: int = DEFAULT_OPSET) -> Path:
    """ONNX at `opset` with a dynamic batch dimension and the ModelInfo in its metadata, checked
    by onnx.checker.

    The TorchScript exporter writes the classic operator forms (GlobalAveragePool, Flatten) that
    every runtime reads; the dynamo exporter's opset-18+ forms (ReduceMean with axes as an
    input) made OpenCV's DNN module return wrong probabilities without an error."""
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.rand(2, info.channels, info.input_size, info.input_size)
    graph = WithSoftmax(model).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        try:
            torch.onnx.export(
                graph,
                (example,),
                str(path),
                input_names=["pixels"],
                output_names=["probabilities"],
                dynamic_axes={"pixels": {0: "batch"}, "probabilities": {0: "batch"}},
                opset_version=opset,
                dynamo=False,
            )
        except Exception as error:  # torch raises many types for an operator it cannot write
            raise UserError(f"ONNX export at opset {opset} failed: {error}") from None
    exported = onnx.load(str(path))
    exported.metadata_props.add(key=ONNX_METADATA_KEY, value=info.to_json())
    onnx.checker.check_model(exported, full_check=True)
    content = exported.SerializeToString()
    runs.atomic_write_bytes(path, lambda tmp: Path(tmp).write_bytes(content))
    info.save(metadata_path(path))
    return path


def export_torchscript(model: nn.Module, info: ModelInfo, path: Path) -> Path:
    """A traced TorchScript file for LibTorch (C++) and PyTorch Mobile, its ModelInfo inside
    (`edgecls.json`) and beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.rand(2, info.channels, info.input_size, info.input_size)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TorchScript's deprecation notice
        traced = torch.jit.trace(WithSoftmax(model).eval(), example)
        torch.jit.save(traced, str(path), _extra_files={TORCHSCRIPT_METADATA: info.to_json()})
    info.save(metadata_path(path))
    return path


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


def export_openvino(onnx_path: Path, info: ModelInfo, path: Path, fp16: bool) -> Path:
    """OpenVINO IR (.xml + .bin) through OpenVINO's own converter."""
    import openvino as ov

    model = ov.convert_model(str(onnx_path))
    ov.save_model(model, str(path), compress_to_fp16=fp16)
    info.save(metadata_path(path))
    return path


def quantize_int8(
    fp32_xml: Path,
    info: ModelInfo,
    calibration: torch.Tensor,
    path: Path,
    validation: ImageSplit | None = None,
    max_drop: float | None = None,
) -> Path:
    """Post-training INT8 quantization with NNCF on calibration images (uint8 N,C,S,S).

    With `max_drop` (points of top-1) NNCF's accuracy-controlled quantization measures top-1 on
    `validation` and returns the layers that cost the most accuracy to floating point until the
    drop is within the limit."""
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

    model = openvino_core().read_model(str(fp32_xml))
    items = [to_float(image[None]).numpy() for image in calibration]
    preset = nncf.QuantizationPreset.MIXED
    if max_drop is None:
        quantized = nncf.quantize(model, nncf.Dataset(items), subset_size=len(items), preset=preset)
    else:
        # NNCF runs its candidates at a dynamic batch, which crashes OpenVINO's CPU plugin on
        # INT8 models (see OpenVINOPredictor): one image at a time, at a static shape.
        model.reshape([1, info.channels, info.input_size, info.input_size])
        pairs = [
            (to_float(image[None]).numpy(), int(label))
            for image, label in zip(validation.images, validation.labels, strict=True)
        ]

        def top1(compiled: Any, data: Any) -> tuple[float, list[float]]:
            hits = [float(compiled(pixels)[0].argmax() == label) for pixels, label in data]
            return sum(hits) / max(1, len(hits)), hits

        quantized = nncf.quantize_with_accuracy_control(
            model,
            nncf.Dataset(items),
            nncf.Dataset(pairs, lambda pair: pair[0]),
            top1,
            max_drop=max_drop / 100,
            drop_type=nncf.DropType.ABSOLUTE,
            preset=preset,
            subset_size=len(items),
            advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(
                ranking_subset_size=INT8_RANKING_IMAGES, max_num_iterations=INT8_MAX_REVERTS
            ),
        )
    ov.save_model(quantized, str(path), compress_to_fp16=False)
    info.save(metadata_path(path))
    return path


def quantize_onnx_int8(
    fp32_path: Path, info: ModelInfo, calibration: torch.Tensor, path: Path
) -> Path:
    """ONNX Runtime's static INT8 quantization (QDQ, per-channel weights) on calibration images
    (uint8 N,C,S,S), with the ModelInfo in the file as for FP32."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    class Images(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(to_float(image[None]).numpy() for image in calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            pixels = next(self.items, None)
            return None if pixels is None else {"pixels": pixels}

    with warnings.catch_warnings(), tempfile.TemporaryDirectory() as folder:
        warnings.simplefilter("ignore")
        logging.getLogger().setLevel(logging.ERROR)  # ORT's advice to pre-process the model
        produced = Path(folder) / path.name
        quantize_static(
            str(fp32_path), str(produced), Images(), quant_format=QuantFormat.QDQ, per_channel=True
        )
        model = onnx.load(str(produced))
    del model.metadata_props[:]
    model.metadata_props.add(key=ONNX_METADATA_KEY, value=info.to_json())
    content = model.SerializeToString()
    runs.atomic_write_bytes(path, lambda tmp: Path(tmp).write_bytes(content))
    info.save(metadata_path(path))
    return path


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
    if fmt not in FORMATS:
        raise UserError(f"unknown export format '{fmt}': choose {', '.join(FORMATS)}")
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision '{precision}': choose {', '.join(PRECISIONS)}")
    if precision != "fp32" and precision not in FORMAT_PRECISIONS.get(fmt, ()):
        others = [f for f, kinds in FORMAT_PRECISIONS.items() if precision in kinds]
        raise UserError(f"{fmt} export has no {precision}: use --format {' or '.join(others)}")
    if fmt in CONVERTERS:
        require_converter(fmt)
    source = TorchPredictor(model_path)
    checkpoint_config = source.config
    run_dir = model_path if model_path.is_dir() else model_path.parent
    out_dir = out_dir or run_dir / "export"
    info = dataclasses.replace(source.info, precision=precision)
    fp32_info = source.info
    try:
        dataset = load_configured_dataset(checkpoint_config, data, progress=False)
    except UserError as error:
        if precision == "int8":
            raise UserError(
                f"INT8 needs calibration data and it could not be loaded: {error}"
            ) from None
        dataset = None
    if precision == "int8" and (dataset is None or not len(dataset.train)):
        raise UserError("INT8 needs calibration data: pass --data DATA (the training data)")
    if max_drop is not None and (precision != "int8" or dataset is None or not len(dataset.val)):
        raise UserError("--max-drop is for --int8 exports, and needs validation data to measure")

    model = source.model
    fp32_path = None  # INT8: the FP32 model it is measured against (and falls back to)
    calibration = torch.zeros(0)
    if precision == "int8":
        calibration = calibration_subset(dataset.train, calibration_size, seed)
    if fmt == "torchscript":
        path = export_torchscript(model, fp32_info, out_dir / "model.torchscript")
    elif fmt == "onnx":
        path = export_onnx(model, fp32_info, out_dir / "model.onnx", opset)
        if precision == "int8":
            fp32_path = path
            path = quantize_onnx_int8(fp32_path, info, calibration, out_dir / "model_int8.onnx")
    elif fmt == "openvino":  # OpenVINO's converter reads the ONNX file
        onnx_path = export_onnx(model, fp32_info, out_dir / "model.onnx", opset)
        if precision == "int8":
            fp32_path = export_openvino(onnx_path, fp32_info, out_dir / "model_fp32.xml", False)
            path = quantize_int8(
                fp32_path, info, calibration, out_dir / "model_int8.xml", dataset.val, max_drop
            )
        else:
            fp16 = precision == "fp16"
            path = export_openvino(onnx_path, info, out_dir / f"model_{precision}.xml", fp16)
    elif fmt == "tflite":
        fp32_path = export_tflite(model, fp32_info, out_dir / "model.tflite")
        path = fp32_path
        if precision == "int8":
            path = quantize_tflite(fp32_path, info, calibration, out_dir / "model_int8.tflite")
    elif fmt == "ncnn":
        path = export_ncnn(model, fp32_info, out_dir / "model.ncnn.param")
    elif fmt == "timm":
        path = export_timm(model, checkpoint_config, fp32_info, out_dir / "timm")
    else:
        name = "model.mlpackage" if precision == "fp32" else f"model_{precision}.mlpackage"
        path = export_coreml(model, info, out_dir / name, precision)

    report = ExportReport(str(path), fmt, precision, opset=opset if fmt == "onnx" else None)
    if dataset is None or not len(dataset.val):
        report.notes.append("no validation data found: predictions were not compared")
    elif fmt == "coreml" and not coreml_runs_here():
        report.notes.append(
            "Core ML runs on macOS and iOS only: the export was not run here, so its "
            "predictions were not compared (run `edgecls export` on a Mac to check them)"
        )
    else:
        report.checked_on = f"{data or checkpoint_config.data} (validation split)"
        reference = source.predict_proba(dataset.val.images)
        exported = TimmFolderPredictor(path) if fmt == "timm" else load_predictor(path)
        compare(exported, reference, dataset.val, report)
        report.latency_ms = batch1_latency(exported, dataset.val)
        if fmt == "onnx" and precision == "fp32":
            check_runtimes(path, reference, dataset.val, report)
        if precision == "int8":
            report.calibration_images = len(calibration)
            fp32 = load_predictor(fp32_path)
            fp32_probabilities = fp32.predict_proba(dataset.val.images)
            report.fp32_top1 = _top1(fp32_probabilities, dataset.val.labels)
            report.int8_top1_drop = 100 * (report.fp32_top1 - report.top1)
            int8_probabilities = exported.predict_proba(dataset.val.images)
            before = per_class_top1(fp32_probabilities, dataset.val.labels, info.classes)
            after = per_class_top1(int8_probabilities, dataset.val.labels, info.classes)
            report.per_class_drop = {k: round(100 * (before[k] - after[k]), 2) for k in before}
            if max_drop is not None:
                report.max_drop = max_drop
                if report.int8_top1_drop > max_drop:
                    report.fallback = str(fp32_path)
                    control = " even with NNCF's accuracy control" if fmt == "openvino" else ""
                    report.notes.append(
                        f"INT8 lost {report.int8_top1_drop:.2f} points of top-1, more than "
                        f"--max-drop {max_drop:g}{control}: deploy the FP32 model "
                        f"{report.fallback} instead"
                    )
    runs.write_json(report_path(path), asdict(report))
    return report


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
