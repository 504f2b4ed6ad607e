"""The Python API: what the command line does, as functions and a `Run`, for notebooks.

    import edgecls
    run = edgecls.train("photos/", time_budget="5m")
    run.metrics["test"]["top1"], run.history[-1]["val_loss"]
    run.predict(["cat.jpg", pil_image, numpy_array])
    run.export("onnx")
    edgecls.load("runs/x/export/model.onnx").predict("cat.jpg")

Every problem with the input raises `edgecls.EdgeclsError` with the message the CLI prints.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from edgecls import config as cfg
from edgecls import runs
from edgecls.console import console, messages_off
from edgecls.data import (
    BadImageError,
    Dataset,
    describe,
    load_dataset,
    load_image,
    printable_path,
    to_tensor,
)
from edgecls.data.images import to_8bit
from edgecls.deploy.predict import Prediction, expand_inputs
from edgecls.deploy.runtime import ModelInfo, Predictor, load_predictor
from edgecls.errors import UserError

EdgeclsError = UserError  # the one exception type of the API, as of the CLI
MEMORY_DATA_ROOT = Path("runs") / "memory-data"  # where in-memory images are written as files


def configure(
    data: str | None,
    recipe: str | None,
    user_values: dict[str, Any],
    started: float | None = None,
) -> tuple[cfg.Config, Any]:
    """The config a run trains with, and the plan that chose it (None with a recipe): the
    recipe's values, else a plan for DATA, under the user's own values, which always win."""
    if recipe is None and data is None:
        recipe = "digits"
    recipe_values = cfg.load_recipe(recipe) if recipe else {}
    if data is not None:
        user_values = {**user_values, "data": data}
    cfg.build_config(recipe_values, user_values)  # bad keys or values fail before planning
    plan = None
    if recipe is None:
        from edgecls.plan import make_plan

        plan = make_plan(data, user_values, started=started)
    config = cfg.build_config(recipe_values, plan.values if plan else {}, user_values)
    data = config.data or cfg.DEFAULT_DATA
    return dataclasses.replace(config, data=data, recipe=recipe or "plan"), plan


@dataclass
class Run:
    """A run folder: what training wrote, and the trained model behind `predict` and `export`."""

    run_dir: Path

    @property
    def metrics(self) -> dict[str, Any]:
        return runs.read_json(self.run_dir / "metrics.json")

    @property
    def history(self) -> list[dict[str, float]]:
        """One dict per epoch: lr, train_loss, val_loss, val_top1, val_top5, val_map, ..."""
        return runs.read_history(self.run_dir)

    @property
    def config(self) -> dict[str, Any]:
        return runs.read_config(self.run_dir)

    @property
    def classes(self) -> list[str]:
        return self.metrics["val"]["classes"]

    @property
    def plan(self) -> dict[str, Any] | None:
        path = self.run_dir / "plan.json"
        return runs.read_json(path) if path.is_file() else None

    def predict(self, images: Any, top_k: int = 5) -> list[Prediction]:
        return predict(load_predictor(self.run_dir), images, top_k)

    def export(self, format: str = "onnx", precision: str = "fp32", **options: Any):
        """`edgecls export RUN --format F --precision P`; options as the CLI's (out_dir, data,
        calibration_size, seed, opset, max_drop). Returns the report (path, agreement, ...)."""
        from edgecls.deploy.export import export_model

        return export_model(self.run_dir, format, precision, **options)


@dataclass
class Model:
    """An exported model file (ONNX, OpenVINO, TorchScript, TFLite, ncnn) in its runtime."""

    path: Path
    predictor: Predictor

    @property
    def info(self) -> ModelInfo:
        return self.predictor.info

    def predict(self, images: Any, top_k: int = 5) -> list[Prediction]:
        return predict(self.predictor, images, top_k)


def load(path: str | Path) -> Run | Model:
    """A run folder (or its best.pt) as a Run, an exported file as a Model."""
    path = Path(path)
    if path.is_dir() and runs.is_run_folder(path):
        return Run(path)
    if path.suffix == ".pt" and path.is_file() and runs.is_run_folder(path.parent):
        return Run(path.parent)
    return Model(path, load_predictor(path))


def train(
    data: Any = None,
    recipe: str | None = None,
    *,
    run_dir: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
    **overrides: Any,
) -> Run:
    """`edgecls train DATA [--recipe R] key=value...`: DATA is a folder, list file or built-in
    name, or in memory: a list of (PIL image or uint8 array, label) pairs or a torchvision-style
    dataset (items (image, label), optional `classes`), written once as PNG files under
    runs/memory-data/ so that the plan, resume, eval and export read them like a folder."""
    from edgecls.plan.table import plan_tables
    from edgecls.training import train as run_training

    started = time.monotonic()  # a notebook's process may be hours old: the budget starts now
    if data is not None and not isinstance(data, (str, Path)):
        data = write_memory_data(data, progress=progress)
    user_values = cfg.parse_overrides([f"{k}={_as_text(v)}" for k, v in overrides.items()])
    with messages_off(not progress):
        config, plan = configure(str(data) if data else None, recipe, user_values, started)
        if plan is not None and plan.candidates and progress:
            for table in plan_tables(plan):
                console.print(table)
        trained = run_training(
            config,
            Path(run_dir) if run_dir else None,
            overwrite=overwrite,
            progress=progress,
            started=started,
            plan=plan.to_dict() if plan else None,
        )
    return Run(trained.run_dir)


def _as_text(value: Any) -> str:
    """A Python value as the CLI's key=value text (YAML), so both check it the same way."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_as_text(v) for v in value) + "]"
    return str(value)


@dataclass
class DataCheck:
    """What `edgecls check-data` prints: `text`, and the loaded `dataset` with its problems."""

    dataset: Dataset
    text: str

    @property
    def ok(self) -> bool:
        return not self.dataset.fatal

    def __str__(self) -> str:
        return self.text


def check_data(
    data: str | Path,
    *,
    input_size: int = 64,
    grayscale: bool = False,
    val_fraction: float = 0.2,
    seed: int = 0,
) -> DataCheck:
    dataset = load_dataset(
        str(data),
        input_size=input_size,
        grayscale=grayscale,
        val_fraction=val_fraction,
        seed=seed,
        strict=False,
        progress=False,
    )
    return DataCheck(dataset, describe(dataset))


def predict(predictor: Predictor, images: Any, top_k: int = 5) -> list[Prediction]:
    """Top-k labels for image paths or folders, PIL images or uint8 arrays (H, W) / (H, W, 3),
    one or a list; an unreadable file raises EdgeclsError naming it."""
    items = images if isinstance(images, (list, tuple)) else [images]
    info = predictor.info
    names, tensors = [], []
    for index, item in enumerate(items):
        for name, image in _images_of(item, index):
            names.append(name)
            tensors.append(to_tensor(to_8bit(image, info.grayscale), info.input_size))
    if not tensors:
        raise UserError("no images to predict")
    probabilities = torch.from_numpy(predictor.predict_proba(torch.stack(tensors)))
    values, indices = probabilities.topk(min(top_k, len(info.classes)), dim=1)
    return [
        Prediction(name, [info.classes[i] for i in idx.tolist()], val.tolist())
        for name, val, idx in zip(names, values, indices, strict=True)
    ]


def _images_of(item: Any, index: int) -> Iterable[tuple[str, Image.Image]]:
    if isinstance(item, (str, Path)):
        for path in expand_inputs([Path(item)]):
            try:
                yield printable_path(path), load_image(path)
            except BadImageError as error:
                raise UserError(str(error)) from None
    else:
        yield f"<image {index}>", _as_image(item, f"image {index}")


def _as_image(item: Any, what: str) -> Image.Image:
    if isinstance(item, Image.Image):
        return item
    if isinstance(item, torch.Tensor):
        item = item.numpy()
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8:
            raise UserError(f"{what}: expected uint8 pixels (0-255), got {item.dtype}")
        if item.ndim == 3 and item.shape[-1] == 1:
            item = item[..., 0]
        if item.ndim == 2 or (item.ndim == 3 and item.shape[-1] in (3, 4)):
            return Image.fromarray(item)
        raise UserError(f"{what}: expected an (H, W) or (H, W, 3) array, got {item.shape}")
    raise UserError(f"{what}: expected a path, a PIL image or a uint8 array, got {type(item)}")


def write_memory_data(
    data: Sequence[tuple[Any, Any]] | Any, root: Path = MEMORY_DATA_ROOT, progress: bool = True
) -> Path:
    """In-memory (image, label) pairs as a folder of class folders of PNGs, named by a hash of
    their content: the same data trains from the same folder, written once."""
    names = getattr(data, "classes", None)
    try:
        pairs = [data[index] for index in range(len(data))]
    except (TypeError, KeyError) as error:
        raise UserError(
            "in-memory data is a list of (image, label) pairs or a dataset with len() and "
            f"[index] giving them: {error}"
        ) from None
    digest = hashlib.sha256()
    encoded = []
    for index, pair in enumerate(pairs):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise UserError(f"item {index} of the data is not an (image, label) pair")
        image, label = pair
        if isinstance(label, torch.Tensor):
            label = label.item()
        if names is not None and isinstance(label, (int, np.integer)):
            label = names[int(label)]
        image = _as_image(image, f"item {index} of the data")
        digest.update(f"{label}|{image.mode}|{image.size}".encode())
        digest.update(image.tobytes())
        encoded.append((_folder_name(str(label)), image))
    if not encoded:
        raise UserError("the in-memory data holds no images")
    folder = root / digest.hexdigest()[:16]
    if not (folder / ".complete").is_file():
        for index, (label, image) in enumerate(encoded):
            (folder / label).mkdir(parents=True, exist_ok=True)
            image.save(folder / label / f"{index:06d}.png")
        (folder / ".complete").write_text("")
    if progress:
        console.print(f"in-memory data: {len(encoded)} images in {folder}", highlight=False)
    return folder


def _folder_name(label: str) -> str:
    """A class name as a folder name: path separators and other unsafe characters replaced."""
    name = re.sub(r"[/\\\x00:]", "_", label).strip() or "_"
    return "_" + name if name.startswith(".") else name
