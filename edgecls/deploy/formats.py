"""Export formats: what every format's writer is given (`ExportJob`) and gives back (`Written`),
and the formats of the ONNX family, ONNX (FP32, INT8 through ONNX Runtime), OpenVINO IR (FP32,
FP16, INT8 through NNCF) and TorchScript, each registered in EXPORT_FORMATS. The formats for
phones are in deploy/mobile.py, timm's folder in deploy/timm_folder.py.

Every writer takes the same graph, normalization and softmax inside, float32 NCHW pixels in
[0, 1], and puts the ModelInfo beside the file (and inside it where the format has a place).
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgecls import runs
from edgecls.config import Config
from edgecls.data import ImageSplit, to_float
from edgecls.deploy.runtime import (
    ONNX_METADATA_KEY,
    TORCHSCRIPT_METADATA,
    ModelInfo,
    Predictor,
    load_predictor,
    metadata_path,
    openvino_core,
)
from edgecls.errors import UserError
from edgecls.models import Classifier, WithSoftmax
from edgecls.registry import EXPORT_FORMATS

DEFAULT_OPSET = 17  # the lowest that represents these models; OpenCV 5 misreads opset 20 forms
# Validation images NNCF's accuracy control ranks each quantized layer on (its default is 300).
# Ranking, mostly recompiling each candidate, is the slow part of an accuracy-controlled export;
# the chosen model is still checked on the whole validation split.
INT8_RANKING_IMAGES = 100
# Layers reverted to floating point one at a time at most (NNCF's default: no limit); past it the
# drop decides as always (FP32 is the fallback). Each revert costs a validation pass.
INT8_MAX_REVERTS = 8


@dataclass
class ExportJob:
    """What a format's writer is given: the checkpoint's model and what was asked of it."""

    model: Classifier
    config: Config  # the checkpoint's
    info: ModelInfo  # the checkpoint's, FP32
    precision: str
    folder: Path
    opset: int = DEFAULT_OPSET
    calibration: torch.Tensor | None = None  # INT8: uint8 training images (N, C, S, S)
    validation: ImageSplit | None = None  # checked on; INT8 with max_drop: NNCF measures on it
    max_drop: float | None = None  # INT8: points of top-1 it may lose against FP32

    @property
    def written_info(self) -> ModelInfo:
        """The ModelInfo of the file at the asked precision."""
        return dataclasses.replace(self.info, precision=self.precision)


@dataclass
class Written:
    path: Path
    fp32_path: Path | None = None  # INT8: the FP32 model it is measured against (and falls back to)


class ExportFormat:
    """One export format, registered in EXPORT_FORMATS: the precisions it writes and how."""

    precisions: tuple[str, ...] = ("fp32",)
    controls_drop = False  # INT8: whether max_drop steers the quantization, not only measures it

    def check(self) -> None:
        """Refuse before anything is loaded when the converter is not installed."""

    def write(self, job: ExportJob) -> Written:
        raise NotImplementedError

    def not_run_here(self) -> str | None:
        """Why the written model cannot be run on this machine to be checked, if it cannot."""
        return None

    def predictor(self, path: Path) -> Predictor:
        return load_predictor(path)


def export_onnx(
    model: torch.nn.Module, info: ModelInfo, path: Path, opset: int = DEFAULT_OPSET
) -> Path:
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


@EXPORT_FORMATS.register("onnx", "ONNX (opset 17 unless --opset), FP32 or INT8 (ONNX Runtime)")
class OnnxFormat(ExportFormat):
    precisions = ("fp32", "int8")

    def write(self, job: ExportJob) -> Written:
        path = export_onnx(job.model, job.info, job.folder / "model.onnx", job.opset)
        if job.precision != "int8":
            return Written(path)
        int8 = job.folder / "model_int8.onnx"
        return Written(quantize_onnx_int8(path, job.written_info, job.calibration, int8), path)


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

    model = openvino_core().read_model(str(fp32_xml))
    items = [to_float(image[None]).numpy() for image in calibration]
    preset = nncf.QuantizationPreset.MIXED
    if max_drop is None:
        quantized = nncf.quantize(model, nncf.Dataset(items), subset_size=len(items), preset=preset)
    else:
        quantized = _quantize_within_drop(model, info, items, validation, max_drop)
    ov.save_model(quantized, str(path), compress_to_fp16=False)
    info.save(metadata_path(path))
    return path


def _quantize_within_drop(
    model: Any, info: ModelInfo, items: list[np.ndarray], validation: ImageSplit, max_drop: float
) -> Any:
    """NNCF's accuracy-controlled quantization of the OpenVINO `model`, top-1 on `validation`."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

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

    return nncf.quantize_with_accuracy_control(
        model,
        nncf.Dataset(items),
        nncf.Dataset(pairs, lambda pair: pair[0]),
        top1,
        max_drop=max_drop / 100,
        drop_type=nncf.DropType.ABSOLUTE,
        preset=nncf.QuantizationPreset.MIXED,
        subset_size=len(items),
        advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(
            ranking_subset_size=INT8_RANKING_IMAGES, max_num_iterations=INT8_MAX_REVERTS
        ),
    )


@EXPORT_FORMATS.register("openvino", "OpenVINO IR (.xml + .bin), FP32, FP16 or INT8 (NNCF)")
class OpenVINOFormat(ExportFormat):
    precisions = ("fp32", "fp16", "int8")
    controls_drop = True

    def write(self, job: ExportJob) -> Written:
        # OpenVINO's converter reads the ONNX file
        onnx_path = export_onnx(job.model, job.info, job.folder / "model.onnx", job.opset)
        if job.precision != "int8":
            path = job.folder / f"model_{job.precision}.xml"
            fp16 = job.precision == "fp16"
            return Written(export_openvino(onnx_path, job.written_info, path, fp16))
        fp32 = export_openvino(onnx_path, job.info, job.folder / "model_fp32.xml", False)
        int8 = job.folder / "model_int8.xml"
        quantized = quantize_int8(
            fp32, job.written_info, job.calibration, int8, job.validation, job.max_drop
        )
        return Written(quantized, fp32)


def export_torchscript(model: torch.nn.Module, info: ModelInfo, path: Path) -> Path:
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


@EXPORT_FORMATS.register("torchscript", "traced TorchScript for LibTorch and PyTorch Mobile")
class TorchScriptFormat(ExportFormat):
    def write(self, job: ExportJob) -> Written:
        return Written(export_torchscript(job.model, job.info, job.folder / "model.torchscript"))
