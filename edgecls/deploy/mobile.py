"""Export formats for phones and microcontrollers, registered in EXPORT_FORMATS: LiteRT/TFLite
(FP32 and full-integer INT8), ncnn (through pnnx) and Core ML (FP32, FP16), each through its
maintained converter, an optional extra (`pip install "edgecls[mobile]"`).

Each takes the same graph as the ONNX export (normalization and softmax inside, float32 NCHW
pixels in [0, 1]) at batch 1, the way these runtimes run it on a device, and carries its
ModelInfo: inside the file where the format has a place for it (TFLite metadata, Core ML user
metadata) and always in the JSON file beside it.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgecls import runs
from edgecls.data import to_float
from edgecls.deploy.formats import ExportFormat, ExportJob, Written
from edgecls.deploy.runtime import (
    TFLITE_METADATA_NAME,
    ModelInfo,
    coreml_runs_here,
    metadata_path,
    quiet,
)
from edgecls.errors import UserError
from edgecls.models import WithSoftmax
from edgecls.registry import EXPORT_FORMATS

# Format -> (the modules its converter needs, the pip package that brings them).
CONVERTERS = {
    "tflite": (("litert_torch", "ai_edge_quantizer"), "litert-torch"),
    "ncnn": (("pnnx",), "pnnx"),
    "coreml": (("coremltools",), "coremltools"),
}


def require_converter(fmt: str) -> None:
    modules, package = CONVERTERS[fmt]
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise UserError(
            f"--format {fmt} needs {package}, which is not installed: "
            f'pip install "edgecls[mobile]" (or pip install {package})'
        )


def _example(info: ModelInfo) -> torch.Tensor:
    return torch.rand(1, info.channels, info.input_size, info.input_size)


def export_tflite(model: nn.Module, info: ModelInfo, path: Path) -> Path:
    """A LiteRT flatbuffer through litert-torch, batch 1, NCHW as the other exports."""
    require_converter("tflite")
    path.parent.mkdir(parents=True, exist_ok=True)
    with quiet():
        import litert_torch

        try:
            edge = litert_torch.convert(WithSoftmax(model).eval(), (_example(info),))
        except Exception as error:  # the converter raises many types for an unsupported op
            raise UserError(f"TFLite conversion failed: {error}") from None
        edge.export(str(path))
    add_tflite_metadata(path, info)
    return path


def quantize_tflite(fp32_path: Path, info: ModelInfo, calibration: torch.Tensor, path: Path):
    """Full-integer INT8 (weights and activations, int8 input and output) with
    ai-edge-quantizer's static recipe, calibrated on uint8 training images (N, C, S, S).

    The quantizer keeps the metadata of the model it reads and writes its weights past the end
    of the flatbuffer, so the INT8 ModelInfo goes into a copy of the FP32 model first."""
    require_converter("tflite")
    with tempfile.TemporaryDirectory() as folder, quiet():
        from ai_edge_litert.interpreter import Interpreter
        from ai_edge_quantizer import quantizer, recipe

        signatures = Interpreter(model_path=str(fp32_path)).get_signature_list()
        signature, names = next(iter(signatures.items()))
        samples = [{names["inputs"][0]: to_float(image[None]).numpy()} for image in calibration]
        source = Path(folder) / fp32_path.name
        shutil.copyfile(fp32_path, source)
        add_tflite_metadata(source, info)
        engine = quantizer.Quantizer(str(source))
        engine.load_quantization_recipe(recipe.static_wi8_ai8())
        result = engine.quantize(engine.calibrate({signature: samples}))
        result.export_model(str(path), overwrite=True)
    info.save(metadata_path(path))
    return path


def add_tflite_metadata(path: Path, info: ModelInfo) -> None:
    """The ModelInfo as a named metadata buffer of the flatbuffer (where TFLite's own metadata
    lives, replacing an earlier one), and beside it."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(path.read_bytes()), 0)
    content = np.frombuffer(info.to_json().encode(), dtype=np.uint8)
    ours = [m for m in model.metadata or [] if m.name == TFLITE_METADATA_NAME.encode()]
    if ours:
        model.buffers[ours[0].buffer].data = content
    else:
        buffer = schema.BufferT()
        buffer.data = content
        model.buffers.append(buffer)
        entry = schema.MetadataT()
        entry.name, entry.buffer = TFLITE_METADATA_NAME, len(model.buffers) - 1
        model.metadata = [*(model.metadata or []), entry]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    packed = bytes(builder.Output())
    runs.atomic_write_bytes(path, lambda tmp: Path(tmp).write_bytes(packed))
    info.save(metadata_path(path))


@EXPORT_FORMATS.register("tflite", "LiteRT/TFLite flatbuffer, FP32 or full-integer INT8")
class TFLiteFormat(ExportFormat):
    precisions = ("fp32", "int8")

    def check(self) -> None:
        require_converter("tflite")

    def write(self, job: ExportJob) -> Written:
        fp32 = export_tflite(job.model, job.info, job.folder / "model.tflite")
        if job.precision != "int8":
            return Written(fp32)
        int8 = job.folder / "model_int8.tflite"
        return Written(quantize_tflite(fp32, job.written_info, job.calibration, int8), fp32)


def export_ncnn(model: nn.Module, info: ModelInfo, path: Path) -> Path:
    """ncnn's model.ncnn.param + model.ncnn.bin through pnnx (PyTorch -> TorchScript -> pnnx ->
    ncnn); pnnx's intermediate files stay in a temporary folder."""
    require_converter("ncnn")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder, quiet():
        import pnnx

        traced = Path(folder) / "model.pt"
        try:
            pnnx.export(WithSoftmax(model).eval(), str(traced), (_example(info),))
        except Exception as error:  # pnnx raises many types for an unsupported op
            raise UserError(f"ncnn conversion (pnnx) failed: {error}") from None
        for suffix in (".param", ".bin"):
            produced = Path(folder) / f"model.ncnn{suffix}"
            if not produced.is_file():
                raise UserError(f"pnnx wrote no {produced.name}: the conversion failed")
            shutil.copyfile(produced, path.with_suffix(suffix))
    info.save(metadata_path(path))
    return path


@EXPORT_FORMATS.register("ncnn", "ncnn's .param + .bin through pnnx")
class NcnnFormat(ExportFormat):
    def check(self) -> None:
        require_converter("ncnn")

    def write(self, job: ExportJob) -> Written:
        return Written(export_ncnn(job.model, job.info, job.folder / "model.ncnn.param"))


def export_coreml(model: nn.Module, info: ModelInfo, path: Path, precision: str) -> Path:
    """An ML Program package (.mlpackage) through coremltools, FP32 or FP16 compute, with the
    ModelInfo in its user-defined metadata and the class names as its description."""
    require_converter("coreml")
    os.environ.setdefault("COREMLTOOLS_SUPPRESS_WARNINGS", "1")
    with quiet():
        import coremltools as ct

        traced = torch.jit.trace(WithSoftmax(model).eval(), _example(info))
        compute = ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32
        try:
            package = ct.convert(
                traced,
                inputs=[ct.TensorType(name="pixels", shape=tuple(_example(info).shape))],
                outputs=[ct.TensorType(name="probabilities")],
                convert_to="mlprogram",
                compute_precision=compute,
            )
        except Exception as error:  # coremltools raises many types for an unsupported op
            raise UserError(f"Core ML conversion failed: {error}") from None
    package.short_description = "edgecls classifier: " + ", ".join(info.classes)
    package.user_defined_metadata["edgecls"] = info.to_json()
    runs.remove_own_output(path, _written_by_edgecls(path))
    package.save(str(path))
    info.save(metadata_path(path))
    return path


def _written_by_edgecls(package: Path) -> bool:
    """A Core ML package edgecls wrote: its model holds the `edgecls` metadata."""
    return any(b"edgecls" in spec.read_bytes() for spec in package.glob("**/*.mlmodel"))


@EXPORT_FORMATS.register("coreml", "Core ML ML Program (.mlpackage), FP32 or FP16")
class CoreMLFormat(ExportFormat):
    precisions = ("fp32", "fp16")

    def check(self) -> None:
        require_converter("coreml")

    def write(self, job: ExportJob) -> Written:
        name = "model.mlpackage" if job.precision == "fp32" else f"model_{job.precision}.mlpackage"
        path = job.folder / name
        return Written(export_coreml(job.model, job.written_info, path, job.precision))

    def not_run_here(self) -> str | None:
        if coreml_runs_here():
            return None
        return (
            "Core ML runs on macOS and iOS only: the export was not run here, so its "
            "predictions were not compared (run `edgecls export` on a Mac to check them)"
        )
