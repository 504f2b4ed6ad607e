"""`edgecls export RUN --format timm`: the trained model as a folder in timm's hub layout
(`model.safetensors` + `config.json`), written by timm's own `save_for_hf`, which plain timm loads
with `timm.create_model("local-dir:PATH")` and which can be pushed to a model hub as it is.

The folder holds the timm backbone alone: the mean/std normalization that edgecls keeps inside
its models goes into the config's preprocessing, where timm's data pipeline reads it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import timm
import torch
from timm.models import save_for_hf

from edgecls import runs
from edgecls.config import Config
from edgecls.deploy.formats import ExportFormat, ExportJob, Written
from edgecls.deploy.runtime import ModelInfo, Predictor
from edgecls.errors import UserError
from edgecls.models import Classifier
from edgecls.registry import EXPORT_FORMATS


def export_timm(model: Classifier, config: Config, info: ModelInfo, folder: Path) -> Path:
    """timm's hub layout for a linear-head model of timm's own registry; others get a reason."""
    if config.head != "linear":
        raise UserError(
            f"--format timm is for linear-head models; this one has a {config.head} head, "
            "which timm does not know"
        )
    if type(model.backbone).__module__.startswith("edgecls"):
        raise UserError(
            f"--format timm writes a folder plain timm loads, and timm has no '{config.model}' "
            "without edgecls: use onnx or torchscript for it"
        )
    if config.head_width:
        raise UserError("--format timm cannot describe head_width: timm builds 1280 wide")
    runs.remove_own_output(folder, (folder / "edgecls.json").is_file())
    channels = 1 if config.grayscale else 3
    save_for_hf(
        model.backbone,
        str(folder),
        # the temperature edgecls divides the logits by (timm does not apply it)
        model_config={"label_names": info.classes, "edgecls_temperature": info.temperature},
        model_args={"num_classes": len(info.classes), "in_chans": channels},
        safe_serialization=True,
        data_config={
            "input_size": (channels, info.input_size, info.input_size),
            "interpolation": "bilinear",
            "mean": tuple(model.mean.flatten().tolist()),
            "std": tuple(model.std.flatten().tolist()),
            "crop_pct": 1.0,
            "crop_mode": "center",
        },
    )
    info.save(folder / "edgecls.json")
    return folder


class TimmFolderPredictor(Predictor):
    """The folder as plain timm loads it, normalized from its own config: the parity check of
    `--format timm`, with nothing of edgecls between timm and the weights."""

    backend = "timm"

    def __init__(self, folder: Path) -> None:
        self.info = ModelInfo.load(folder / "edgecls.json")
        self.model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
        config = self.model.pretrained_cfg
        self.mean = torch.tensor(config["mean"]).view(1, -1, 1, 1)
        self.std = torch.tensor(config["std"]).view(1, -1, 1, 1)

    @torch.inference_mode()
    def run(self, pixels: np.ndarray) -> np.ndarray:
        batch = (torch.from_numpy(pixels) - self.mean) / self.std
        return (self.model(batch) / self.info.temperature).softmax(1).numpy()


@EXPORT_FORMATS.register("timm", "a folder in timm's hub layout that plain timm loads")
class TimmFormat(ExportFormat):
    def write(self, job: ExportJob) -> Written:
        return Written(export_timm(job.model, job.config, job.info, job.folder / "timm"))

    def predictor(self, path: Path) -> Predictor:
        return TimmFolderPredictor(path)
