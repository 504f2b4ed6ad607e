"""A trained checkpoint measured: on a dataset split for `edgecls eval`, and at the end of
`edgecls train` the run's best.pt on validation and test, with its temperature fitted."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgecls import runs
from edgecls.data import Dataset, ImageSplit, load_configured_dataset
from edgecls.device import select_device
from edgecls.errors import UserError
from edgecls.evaluate.calibration import fit_temperature, reliability
from edgecls.evaluate.inference import predict_logits
from edgecls.evaluate.metrics import Metrics, compute_metrics
from edgecls.evaluate.robustness import robustness_report
from edgecls.evaluate.saliency import explain_run
from edgecls.models import model_from_checkpoint
from edgecls.report.html import write_report
from edgecls.report.plots import plot_confusion_matrix, plot_mistakes, plot_reliability


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
    if out_dir is None:
        run_dir = model_path if model_path.is_dir() else model_path.parent
        out_dir = run_dir / "eval" / f"{Path(data).name}-{split_name}"
    model = model.to(device)
    _, metrics = evaluate_split(
        model, chosen.images, labels, classes, out_dir / "confusion.png", config.eval_batch_size
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    runs.write_json(
        out_dir / "metrics.json", {"data": data, "split": split_name, **metrics.to_dict()}
    )
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


def evaluate_split(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    classes: list[str],
    confusion: Path,
    batch_size: int,
    channels_last: bool = True,
    logits: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Metrics]:
    """The model's logits and metrics on uint8 `images`, its confusion matrix drawn at
    `confusion`: the one measurement of `edgecls eval` and of a finished training run. `logits`
    the caller already has for these weights and images are used instead of another pass."""
    if logits is None:
        logits = predict_logits(model, images, batch_size, channels_last=channels_last)
    metrics = compute_metrics(logits, labels, classes)
    plot_confusion_matrix(metrics.confusion, classes, confusion)
    return logits, metrics


def evaluate_best(
    model: nn.Module,
    dataset: Dataset,
    run_dir: Path,
    facts: dict[str, Any],
    batch_size: int,
    channels_last: bool,
    val_logits: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Load the run's best.pt into `model` and evaluate it on validation (and test); fit its
    temperature on validation and store it in best.pt, so eval, predict and every export give
    calibrated probabilities. Writes metrics.json (with the run's `facts`) and the plots.
    `val_logits`: best.pt's on validation, when the training loop kept them (no second pass)."""

    def measure(
        split: ImageSplit, name: str, logits: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, Metrics]:
        confusion = run_dir / f"confusion_{name}.png"
        return evaluate_split(
            model,
            split.images,
            split.labels,
            dataset.classes,
            confusion,
            batch_size,
            channels_last,
            logits,
        )

    best = runs.load_checkpoint(run_dir / "best.pt")
    model.load_state_dict(best["model"])
    val_logits, val = measure(dataset.val, "val", val_logits)
    temperature = fit_temperature(val_logits, dataset.val.labels)
    best["temperature"] = temperature
    runs.save_checkpoint(best, run_dir / "best.pt")
    calibration: dict[str, Any] = {
        "temperature": temperature,
        "val": reliability(val_logits, dataset.val.labels).to_dict(),
        "val_calibrated": reliability(val_logits / temperature, dataset.val.labels).to_dict(),
    }
    metrics: dict[str, Any] = {
        "val_top1": val.top1,
        "val_top5": val.top5,
        "val_map": val.map,
        "val_balanced_accuracy": val.balanced_accuracy,
        "val_loss": val.loss,
        **facts,
        "val": val.to_dict(),
    }
    scored, scored_logits = dataset.val, val_logits
    if dataset.test is not None and len(dataset.test.labels):
        scored = dataset.test
        scored_logits, test = measure(dataset.test, "test")
        calibration["test"] = reliability(scored_logits, scored.labels).to_dict()
        calibration["test_calibrated"] = reliability(
            scored_logits / temperature, scored.labels
        ).to_dict()
        metrics.update(
            test_top1=test.top1,
            test_top5=test.top5,
            test_map=test.map,
            test_balanced_accuracy=test.balanced_accuracy,
        )
        metrics["test"] = test.to_dict()
    metrics["calibration"] = calibration
    metrics["mistakes"] = confident_mistakes(
        scored, scored_logits / temperature, dataset.classes, run_dir
    )
    probabilities = (val_logits / temperature).softmax(dim=1)
    metrics["saliency"] = explain_run(model, dataset.val, probabilities, dataset.classes, run_dir)
    runs.write_json(run_dir / "metrics.json", metrics)
    plot_reliability(calibration, run_dir / "reliability.png")
    return metrics


MISTAKES_SHOWN = 12


def confident_mistakes(
    split: ImageSplit, logits: torch.Tensor, classes: list[str], run_dir: Path
) -> list[dict[str, Any]]:
    """The wrong predictions the model was surest of, drawn as mistakes.png and listed with
    where each image came from."""
    confidence, predicted = logits.softmax(dim=1).max(dim=1)
    wrong = torch.nonzero(predicted != split.labels).flatten()
    worst = wrong[confidence[wrong].argsort(descending=True)][:MISTAKES_SHOWN].tolist()
    mistakes = [
        {
            "source": split.sources[i] if i < len(split.sources) else str(i),
            "true": classes[int(split.labels[i])],
            "predicted": classes[int(predicted[i])],
            "confidence": float(confidence[i]),
        }
        for i in worst
    ]
    if mistakes:
        plot_mistakes(
            split.images[worst].numpy(),
            [m["true"] for m in mistakes],
            [m["predicted"] for m in mistakes],
            [m["confidence"] for m in mistakes],
            run_dir / "mistakes.png",
        )
    return mistakes


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
