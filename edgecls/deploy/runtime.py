"""One predictor interface over every model kind edgecls writes: a PyTorch checkpoint, an ONNX
file (ONNX Runtime), an OpenVINO IR, a TorchScript, TFLite or ncnn file or a Core ML package,
chosen from the file.

Exported models take float32 pixels in [0, 1], NCHW, RGB or one channel, at `input_size`
(normalization is inside the graph) and return class probabilities. The metadata file beside
them (`<model>.json`), and the copy inside the file where the format has a place for it, carry
the class names and input size, so nobody re-implements the preprocessing.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgecls import runs
from edgecls.errors import UserError

if TYPE_CHECKING:
    import torch


@dataclass
class ModelInfo:
    """What a deployed model needs to be fed and read."""

    classes: list[str]
    input_size: int
    grayscale: bool
    precision: str = "fp32"
    temperature: float = 1.0  # inside the graph: the probabilities are softmax(logits / T)
    preprocessing: str = (
        "RGB (or grayscale) image, EXIF orientation applied; shorter side resized to input_size "
        "(bilinear, antialiased), centre crop to input_size x input_size; float32 NCHW in [0, 1]; "
        "mean/std normalization is inside the model"
    )
    output: str = "class probabilities (softmax inside the model), shape (batch, classes)"

    @property
    def channels(self) -> int:
        return 1 if self.grayscale else 3

    def save(self, path: Path) -> None:
        runs.write_json(path, asdict(self))

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> ModelInfo:
        keys = ("classes", "input_size", "grayscale", "precision")
        return cls(**{key: values[key] for key in keys}, temperature=values.get("temperature", 1.0))

    @classmethod
    def load(cls, path: Path) -> ModelInfo:
        if not path.is_file() and path.with_suffix(".onnx").is_file():
            embedded = onnx_metadata(path.with_suffix(".onnx"))
            if embedded is not None:
                return embedded
        if not path.is_file():
            raise UserError(
                f"metadata file {path} is missing: export the model with `edgecls export` "
                "(it writes the class names and input size beside the model)"
            )
        try:
            return cls.from_values(json.loads(path.read_text()))
        except (ValueError, KeyError, TypeError) as error:
            raise UserError(f"metadata file {path} is damaged: {error}") from None


ONNX_METADATA_KEY = "edgecls"  # the ModelInfo as JSON, in the ONNX file's metadata_props
TORCHSCRIPT_METADATA = "edgecls.json"  # and in a TorchScript file's extra files
TFLITE_METADATA_NAME = "edgecls"  # and in a TFLite flatbuffer's metadata


def onnx_metadata(path: Path) -> ModelInfo | None:
    """The ModelInfo an ONNX file carries itself (exported by edgecls), if any."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
        props = {prop.key: prop.value for prop in model.metadata_props}
        return ModelInfo.from_values(json.loads(props[ONNX_METADATA_KEY]))
    except Exception:  # not ONNX, or not ours: the JSON file beside it decides
        return None


@functools.cache
def openvino_core():
    """One OpenVINO Core per process: models read and compiled by it share its plugins."""
    import openvino as ov

    return ov.Core()


def metadata_path(model_path: Path) -> Path:
    return model_path.with_suffix(".json")


class Predictor:
    """uint8 images (N, C, S, S) -> probabilities (N, classes) as numpy."""

    info: ModelInfo
    backend: str

    def predict_proba(self, images: np.ndarray | torch.Tensor, batch_size: int = 64) -> np.ndarray:
        outputs = [
            self.run(np.asarray(images[start : start + batch_size], dtype=np.float32) / 255)
            for start in range(0, len(images), batch_size)
        ]
        return np.concatenate(outputs) if outputs else np.zeros((0, len(self.info.classes)))

    def run(self, pixels: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class TorchPredictor(Predictor):
    backend = "torch"

    def __init__(self, path: Path) -> None:
        from edgecls.models import model_from_checkpoint

        checkpoint = runs.load_checkpoint(path)
        self.model, self.config = model_from_checkpoint(checkpoint)
        self.info = ModelInfo(
            list(checkpoint["classes"]),
            self.config.input_size,
            self.config.grayscale,
            temperature=float(self.model.temperature),
        )

    def run(self, pixels: np.ndarray) -> np.ndarray:
        import torch

        batch = torch.from_numpy(pixels).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            return self.model(batch).float().softmax(1).numpy()


class OnnxPredictor(Predictor):
    backend = "onnxruntime"

    def __init__(self, path: Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        self.info = ModelInfo.load(metadata_path(path))
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as error:  # onnxruntime raises its own exception types
            raise UserError(f"cannot load ONNX model {path}: {error}") from None
        self.input_name = self.session.get_inputs()[0].name

    def run(self, pixels: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: pixels.astype(np.float32)})[0]


class TorchScriptPredictor(Predictor):
    """A traced TorchScript export (probabilities out), as LibTorch would run it."""

    backend = "torchscript"

    def __init__(self, path: Path) -> None:
        import torch

        extra = {TORCHSCRIPT_METADATA: ""}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # TorchScript's deprecation notice
                self.module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        except Exception as error:  # torch raises many types for a file that is not TorchScript
            raise UserError(f"cannot load TorchScript model {path}: {error}") from None
        if extra[TORCHSCRIPT_METADATA]:
            self.info = ModelInfo.from_values(json.loads(extra[TORCHSCRIPT_METADATA]))
        else:
            self.info = ModelInfo.load(metadata_path(path))

    def run(self, pixels: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            return self.module(torch.from_numpy(pixels.astype(np.float32))).numpy()


class OpenVINOPredictor(Predictor):
    """Compiled once per batch size, at a static shape: OpenVINO's CPU plugin (2025.4 to 2026.4)
    crashes running NNCF's INT8 models at a dynamic batch size."""

    backend = "openvino"

    def __init__(self, path: Path, precision_hint: str = "f32") -> None:
        self.info = ModelInfo.load(metadata_path(path))
        self.path, self.precision_hint = path, precision_hint
        self.compiled_for_batch: dict[int, Any] = {}
        self._compile(1)  # reads and checks the file now, not at the first prediction

    def _compile(self, batch: int) -> Any:
        if batch not in self.compiled_for_batch:
            core = openvino_core()
            try:
                model = core.read_model(str(self.path))
                shape = model.input(0).get_partial_shape()
                shape[0] = batch
                model.reshape(shape)
            except Exception as error:  # openvino raises RuntimeError subclasses of its own
                raise UserError(f"cannot load OpenVINO model {self.path}: {error}") from None
            # OpenVINO picks bf16 on CPUs that have it; FP32 must be asked for to mean FP32.
            self.compiled_for_batch[batch] = core.compile_model(
                model,
                "CPU",
                {"INFERENCE_PRECISION_HINT": self.precision_hint, "PERFORMANCE_HINT": "LATENCY"},
            )
        return self.compiled_for_batch[batch]

    def run(self, pixels: np.ndarray) -> np.ndarray:
        return self._compile(len(pixels))(pixels.astype(np.float32))[0]


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """The converters print pages of progress, warnings and C++ logs; the export report is what
    counts. Their output goes to a file (at the descriptor level, for the C++ parts), shown only
    when the conversion fails."""
    sys.stdout.flush()
    sys.stderr.flush()
    with (
        tempfile.TemporaryFile("w+") as log,
        warnings.catch_warnings(),
        contextlib.redirect_stdout(log),  # Python-level prints, wherever sys.stdout points
        contextlib.redirect_stderr(log),
    ):
        warnings.simplefilter("ignore")
        saved = [os.dup(1), os.dup(2)]
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        logging.disable(logging.WARNING)
        try:
            yield
        except UserError as error:
            log.seek(0)
            tail = [line for line in log.read().splitlines() if line.strip()][-5:]
            raise UserError("\n".join([str(error), *tail])) from None
        finally:
            logging.disable(logging.NOTSET)
            log.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for descriptor in saved:
                os.close(descriptor)


class TFLitePredictor(Predictor):
    """LiteRT's interpreter (XNNPACK on a CPU), one image at a time as on a device; an INT8
    model's int8 input and output go through the scale and zero point it carries."""

    backend = "litert"

    def __init__(self, path: Path, threads: int | None = None) -> None:
        try:
            with quiet():
                from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            raise UserError(
                f'running {path.name} needs LiteRT: pip install "edgecls[mobile]"'
            ) from None
        self.info = tflite_metadata(path) or ModelInfo.load(metadata_path(path))
        try:
            with quiet():
                self.interpreter = Interpreter(model_path=str(path), num_threads=threads)
                self.interpreter.allocate_tensors()
        except (RuntimeError, ValueError) as error:
            raise UserError(f"cannot load TFLite model {path}: {error}") from None
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]

    def run(self, pixels: np.ndarray) -> np.ndarray:
        return np.concatenate([self._one(image[None]) for image in pixels])

    def _one(self, pixels: np.ndarray) -> np.ndarray:
        scale, zero = self.input["quantization"]
        if self.input["dtype"] != np.float32:
            pixels = np.clip(np.round(pixels / scale + zero), -128, 127)
        self.interpreter.set_tensor(self.input["index"], pixels.astype(self.input["dtype"]))
        self.interpreter.invoke()
        out = self.interpreter.get_tensor(self.output["index"])
        scale, zero = self.output["quantization"]
        return (out.astype(np.float32) - zero) * scale if out.dtype != np.float32 else out


def tflite_metadata(path: Path) -> ModelInfo | None:
    """The ModelInfo a TFLite file carries itself (exported by edgecls), if any."""
    try:
        from ai_edge_litert import schema_py_generated as schema

        model = schema.ModelT.InitFromPackedBuf(bytearray(path.read_bytes()), 0)
        entry = next(m for m in model.metadata or [] if m.name == TFLITE_METADATA_NAME.encode())
        content = bytes(model.buffers[entry.buffer].data)
        return ModelInfo.from_values(json.loads(content))
    except Exception:  # not TFLite, or not ours: the JSON file beside it decides
        return None


class NcnnPredictor(Predictor):
    """ncnn's Python binding on model.ncnn.param/.bin, one image at a time as on a device."""

    backend = "ncnn"

    def __init__(self, path: Path, threads: int | None = None) -> None:
        try:
            import ncnn
        except ImportError:
            raise UserError(f"running {path.name} needs ncnn: pip install ncnn") from None
        self.info = ModelInfo.load(metadata_path(path))
        self.ncnn, self.net = ncnn, ncnn.Net()
        if threads:
            self.net.opt.num_threads = threads
        weights = path.with_suffix(".bin")
        if self.net.load_param(str(path)) != 0 or self.net.load_model(str(weights)) != 0:
            raise UserError(f"cannot load ncnn model {path} (and {weights.name})")

    def run(self, pixels: np.ndarray) -> np.ndarray:
        outputs = []
        for image in pixels.astype(np.float32):
            extractor = self.net.create_extractor()
            extractor.input("in0", self.ncnn.Mat(np.ascontiguousarray(image)).clone())
            _, out = extractor.extract("out0")
            outputs.append(np.array(out).reshape(1, -1))
        return np.concatenate(outputs)


def coreml_runs_here() -> bool:
    """Core ML's runtime exists on macOS only; coremltools converts anywhere."""
    return sys.platform == "darwin"


class CoreMLPredictor(Predictor):
    backend = "coreml"

    def __init__(self, path: Path) -> None:
        if not coreml_runs_here():
            raise UserError(
                f"{path.name} is a Core ML model, which runs on macOS and iOS only; here use "
                "the ONNX, OpenVINO, TFLite or ncnn export of the same run"
            )
        import coremltools as ct

        self.info = ModelInfo.load(metadata_path(path))
        self.model = ct.models.MLModel(str(path))

    def run(self, pixels: np.ndarray) -> np.ndarray:
        return np.concatenate(
            [self.model.predict({"pixels": image[None]})["probabilities"] for image in pixels]
        )


def load_predictor(path: Path) -> Predictor:
    """A checkpoint or run folder, or an exported model, by its name."""
    path = Path(path)
    if path.suffix == ".mlpackage" and path.is_dir():
        return CoreMLPredictor(path)
    if path.is_dir() or path.suffix == ".pt":
        return TorchPredictor(path)
    if not path.is_file():
        raise UserError(f"no model at {path}")
    if path.suffix == ".onnx":
        return OnnxPredictor(path)
    if path.suffix == ".xml":
        return OpenVINOPredictor(path)
    if path.suffix == ".torchscript":
        return TorchScriptPredictor(path)
    if path.suffix == ".tflite":
        return TFLitePredictor(path)
    if path.suffix == ".param":
        return NcnnPredictor(path)
    raise UserError(
        f"unknown model file type '{path.suffix}': expected .pt, .onnx, .xml, .torchscript, "
        ".tflite, .param (ncnn) or .mlpackage"
    )
