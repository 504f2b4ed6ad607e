"""The whole `edgecls train` job: data, initial LR, the training loop, final evaluation."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from edgecls import runs
from edgecls.config import Config
from edgecls.data import Dataset, load_configured_dataset
from edgecls.models import create_model
from edgecls.report.progress import console
from edgecls.train.loop import Trainer
from edgecls.train.lr_search import search_lr


def write_skipped(run_dir: Path, dataset: Dataset) -> None:
    if dataset.skipped:
        lines = [f"{path}\t{reason}" for path, reason in dataset.skipped]
        runs.write_text(run_dir / "skipped_files.txt", "\n".join(lines) + "\n")


def train(
    config: Config,
    run_dir: Path,
    *,
    resume: bool = False,
    progress: bool = True,
    dataset: Dataset | None = None,
) -> dict[str, Any]:
    """Train as configured into `run_dir`; return the final metrics (also in metrics.json).

    With `resume`, training continues from last.pt, or, if the run stopped during the LR search,
    the search continues from its stored trials. `dataset` overrides `config.data` (benchmarks
    that train on a fixed subset).
    """
    dataset = dataset or load_configured_dataset(config, progress=progress)
    # Build the model once before the run folder exists: a wrong name or weights file fails here.
    create_model(config, len(dataset.classes))
    run_dir.mkdir(parents=True, exist_ok=True)
    runs.write_config(run_dir, config)
    console.print(f"run folder: {run_dir}", highlight=False)
    write_skipped(run_dir, dataset)
    extra: dict[str, Any] = {}
    if isinstance(config.lr, str):
        search = search_lr(config, dataset, run_dir, progress)
        runs.write_json(run_dir / "lr_search.json", search.to_dict())
        console.print(f"initial lr ({search.method}): {search.lr:.4g} in {search.seconds:.0f} s")
        config = dataclasses.replace(config, lr=search.lr)
        runs.write_config(run_dir, config)
        extra["lr_search"] = {
            "method": search.method,
            "lr": search.lr,
            "seconds": round(search.seconds, 2),
            "trials": len(search.trials),
        }
    trainer = Trainer(config, run_dir, dataset, progress)
    if resume and (run_dir / "last.pt").is_file():
        trainer.restore(runs.load_checkpoint(run_dir / "last.pt"))
    trainer.fit()
    metrics = trainer.finish({"lr": config.lr, **extra})
    if config.export:
        from edgecls.deploy.export import export_after_training  # onnx/openvino load slowly

        metrics["exports"] = export_after_training(run_dir, config.export.split(","))
        runs.write_json(run_dir / "metrics.json", metrics)
    return metrics
