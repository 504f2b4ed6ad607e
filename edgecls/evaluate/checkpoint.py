"""`edgecls eval`: a trained checkpoint measured on a dataset split."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from edgecls import runs
from edgecls.data import ImageSplit, load_configured_dataset
from edgecls.device import select_device
from edgecls.errors import UserError
from edgecls.evaluate.inference import predict_logits
from edgecls.evaluate.metrics import Metrics, compute_metrics
from edgecls.evaluate.robustness import robustness_report
from edgecls.models import model_from_checkpoint
from edgecls.report import plot_confusion_matrix
from edgecls.report.html import write_report

SPLITS = ("auto", "train", "val", "test", "all")


def _pick_split(dataset, split: str) -> tuple[str, ImageSplit]:
    if split == "auto":
        split = "test" if dataset.test is not None else "val"
    if split == "all":
        parts = [p for p in (dataset.train, dataset.val, dataset.test) if p is not None]
        return "all", ImageSplit(
            images=torch.cat([p.images for p in parts]),
            labels=torch.cat([p.labels for p in parts]),
            sources=[s for p in parts for s in p.sources],
        )
    chosen = getattr(dataset, split)
    if chosen is None:
        raise UserError(f"the dataset has no '{split}' split")
    return split, chosen


def evaluate_checkpoint(
    model_path: Path,
    data: str,
    *,
    split: str = "auto",
    out_dir: Path | None = None,
    data_root: str | None = None,
    progress: bool = True,
    corruptions: bool = False,
    reference: Path | None = None,
    corruption_images: int = 1000,
) -> tuple[str, Metrics, Path]:
    """Measure a checkpoint on `split` of `data`; save metrics.json and the confusion matrix;
    with `corruptions`, robustness.json too (on a seeded subset of `corruption_images`), beside
    them and in the run's eval/ folder, where report.html finds it."""
    checkpoint = runs.load_checkpoint(model_path)
    model, config = model_from_checkpoint(checkpoint)
    classes = list(checkpoint["classes"])
    if data_root:
        config = dataclasses.replace(config, data_root=data_root)
    dataset = load_configured_dataset(config, data, progress=progress)
    if dataset.classes != classes:
        unknown = sorted(set(dataset.classes) - set(classes))
        if unknown:
            raise UserError(f"classes not known to the model: {', '.join(unknown[:10])}")
        remap = torch.tensor([classes.index(name) for name in dataset.classes])
    else:
        remap = None
    split_name, chosen = _pick_split(dataset, split)
    labels = chosen.labels if remap is None else remap[chosen.labels]
    device = select_device(config.device)
    logits = predict_logits(model.to(device), chosen.images, config.eval_batch_size, device)
    metrics = compute_metrics(logits, labels, classes)
    if out_dir is None:
        run_dir = model_path if model_path.is_dir() else model_path.parent
        out_dir = run_dir / "eval" / f"{Path(data).name}-{split_name}"
    out_dir.mkdir(parents=True, exist_ok=True)
    runs.write_json(
        out_dir / "metrics.json", {"data": data, "split": split_name, **metrics.to_dict()}
    )
    plot_confusion_matrix(metrics.confusion, classes, out_dir / "confusion.png")
    if corruptions:
        run_dir = model_path if model_path.is_dir() else model_path.parent
        subset = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
        subset = subset[:corruption_images]
        result = _robustness(
            model, config, chosen.images[subset], labels[subset], classes, device, reference
        )
        runs.write_json(out_dir / "robustness.json", result)
        if (run_dir / "metrics.json").is_file():
            runs.write_json(run_dir / "eval" / "robustness.json", result)
            write_report(run_dir)
    return split_name, metrics, out_dir


def _robustness(model, config, images, labels, classes, device, reference: Path | None) -> dict:
    def predictor(net):
        net = net.to(device)
        return lambda batch: predict_logits(net, batch, config.eval_batch_size, device).argmax(1)

    other = None
    if reference is not None:
        checkpoint = runs.load_checkpoint(reference)
        reference_model, reference_config = model_from_checkpoint(checkpoint)
        if list(checkpoint["classes"]) != classes:
            raise UserError(f"reference {reference} was trained on other classes")
        same_input = (reference_config.input_size, reference_config.grayscale)
        if same_input != (config.input_size, config.grayscale):
            raise UserError(
                f"reference {reference} takes {reference_config.input_size} px "
                f"{'grey' if reference_config.grayscale else 'colour'} images; the model "
                f"{config.input_size} px {'grey' if config.grayscale else 'colour'} ones"
            )
        other = predictor(reference_model)
    name = str(reference) if reference is not None else None
    return robustness_report(predictor(model), images, labels, other, name)
