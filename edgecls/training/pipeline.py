"""The whole `edgecls train` job: data, initial LR, the training loop, then the best checkpoint
evaluated and reported (metrics.json, plots)."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from edgecls import runs
from edgecls.config import Config, parse_duration
from edgecls.console import console, messages_off
from edgecls.data import Dataset, load_configured_dataset
from edgecls.data.splits import IMBALANCE_RATIO, data_summary, describe_changes, imbalance_ratio
from edgecls.errors import UserError
from edgecls.evaluate.audit import audit_splits
from edgecls.evaluate.checkpoint import evaluate_best
from edgecls.models import create_model, on_meta_device, set_test_views, views_averaged
from edgecls.phases import Phases
from edgecls.report.audit import write_audit_of
from edgecls.report.html import leak_advice, write_report
from edgecls.report.plots import plot_history
from edgecls.training.callbacks import CheckpointWriter, ProgressBars
from edgecls.training.distributed import SINGLE, World
from edgecls.training.loop import Diverged, Trainer
from edgecls.training.losses import load_teacher
from edgecls.training.lr_search import search_lr
from edgecls.training.tracking import check_trackers, create_trackers


@dataclass
class TrainedRun:
    run_dir: Path
    metrics: dict[str, Any]


def write_skipped(run_dir: Path, dataset: Dataset) -> None:
    if dataset.skipped:
        lines = [f"{path}\t{reason}" for path, reason in dataset.skipped]
        runs.write_text(run_dir / "skipped_files.txt", "\n".join(lines) + "\n")


def train(
    config: Config,
    run_dir: Path | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    resume_overrides: dict[str, Any] | None = None,
    accept_changed_data: bool = False,
    progress: bool = True,
    dataset: Dataset | None = None,
    started: float | None = None,
    plan: dict[str, Any] | None = None,
    world: World = SINGLE,
    phases: Phases | None = None,
) -> TrainedRun:
    """Train as configured into `run_dir` (None: a new folder under runs/); return the final
    metrics (also in metrics.json).

    The folder is locked for the whole run. With `resume`, training continues from last.pt, or,
    if the run stopped during the LR search, the search continues from its stored trials;
    `resume_overrides` are the safe settings changed for the rest of the run; data that changed
    since (images added or removed, another validation split) is refused unless
    `accept_changed_data`. `dataset`
    overrides `config.data` (benchmarks that train on a fixed subset). A `time_budget` counts
    from `started` (time.monotonic() when the job began; default now); `plan` is saved as
    plan.json. In a `world` of several processes, rank 0 claims the folder, writes every file
    and returns the metrics; the others train beside it, silent, and return none. `phases`
    holds the seconds spent so far (startup, plan), for metrics.json's phase_seconds.
    """
    started = time.monotonic() if started is None else started
    phases = phases or Phases()
    resuming = Resuming(resume_overrides or {}, accept_changed_data) if resume else None
    if not world.main:
        run_dir = world.share(None)  # rank 0's, once it has claimed it
        with messages_off():
            _train_in(config, run_dir, resuming, False, dataset, started, None, world, phases)
        return TrainedRun(run_dir, {})
    with runs.claim_run_dir(run_dir, config, overwrite=overwrite, resume=resume) as run_dir:
        world.share(run_dir)
        try:
            metrics = _train_in(
                config, run_dir, resuming, progress, dataset, started, plan, world, phases
            )
        except KeyboardInterrupt:
            if (run_dir / "config.yaml").is_file():
                console.print(f"continue with: edgecls train --resume {run_dir}", highlight=False)
            raise
        except Diverged as why:
            best = run_dir / "best.pt"
            kept = f"; the best checkpoint so far is {best}" if best.is_file() else ""
            raise UserError(f"{why}{kept}; try a lower lr") from None
    return TrainedRun(run_dir, metrics)


def resolve_balance(config: Config, dataset: Dataset) -> Config:
    """balance=auto: a class-balanced sampler when the largest class of the training split has
    more than IMBALANCE_RATIO times the images of the smallest, else none; said when chosen."""
    if config.balance != "auto":
        return config
    ratio = imbalance_ratio(dataset.train, len(dataset.classes))
    if ratio <= IMBALANCE_RATIO:
        return dataclasses.replace(config, balance="none")
    console.print(
        f"class imbalance 1:{ratio:.0f} in the training split (over 1:{IMBALANCE_RATIO}): "
        "balance=sampler, each class drawn equally often",
        highlight=False,
    )
    return dataclasses.replace(config, balance="sampler")


BUDGET_RESERVE = 0.03  # share of a time budget kept for the final evaluation
EXPORT_RESERVE = 0.05  # and for exporting, when asked to


def _training_budget(config: Config, started: float) -> float | None:
    """Seconds the time budget leaves for training, after what the job already spent and a
    reserve for the final evaluation (and export)."""
    if config.time_budget is None:
        return None
    budget = parse_duration(config.time_budget)
    reserve = budget * (BUDGET_RESERVE + EXPORT_RESERVE * bool(config.export))
    return max(1.0, budget - (time.monotonic() - started) - reserve)


def _check_same_classes(dataset: Dataset, checkpoint: dict[str, Any]) -> None:
    if list(checkpoint["classes"]) != dataset.classes:
        added = sorted(set(dataset.classes) - set(checkpoint["classes"]))
        gone = sorted(set(checkpoint["classes"]) - set(dataset.classes))
        change = ", ".join(
            [f"new: {', '.join(added[:5])}"] * bool(added)
            + [f"missing: {', '.join(gone[:5])}"] * bool(gone)
        )
        raise UserError(
            "the data's classes differ from the interrupted run's "
            f"({change or 'same names, other order'}); resume with the same data or start a new run"
        )


def _record_resume(trainer: Trainer, saved_lr: float, changed: dict[str, Any]) -> None:
    """A resume, with its safe changes for the rest of the run, recorded in the run's state."""
    state = trainer.state
    if "lr" in changed:
        state.lr_scale *= changed["lr"] / saved_lr
    if "max_epochs" in changed:
        if hasattr(trainer.schedule, "max_epochs"):
            trainer.schedule.max_epochs = changed["max_epochs"]
        state.stopped = state.stopped and state.epoch >= changed["max_epochs"]
        state.stopped_by = state.stopped_by if state.stopped else ""
    state.resumes.append({"epoch": state.epoch, "overrides": changed})


@dataclass(frozen=True)
class Resuming:
    """A resumed run: the safe settings it changes, and whether the user accepts changed data."""

    overrides: dict[str, Any]
    accept_changed_data: bool = False


def _train_in(
    config: Config,
    run_dir: Path,
    resuming: Resuming | None,
    progress: bool,
    dataset: Dataset | None,
    started: float,
    plan: dict[str, Any] | None,
    world: World,
    phases: Phases,
) -> dict[str, Any]:
    """`train` in its claimed folder, in every process; rank 0 alone writes and evaluates."""
    with phases.timing("load"):
        dataset = dataset or load_configured_dataset(config, progress=progress)
    config = resolve_balance(config, dataset)
    checkpoint = _resumed_checkpoint(run_dir, resuming, dataset)
    _check_before_writing(config, dataset, world)
    if world.main:
        _start_run_folder(run_dir, config, plan, dataset, world)
        if config.audit != "off" and checkpoint is None:
            with phases.timing("audit"):
                _audit_data(config, dataset, run_dir, progress)
    extra: dict[str, Any] = {"processes": world.size}
    if isinstance(config.lr, str):
        with phases.timing("lr_search"):
            config = _searched_lr(config, dataset, run_dir, progress, world)
    if (run_dir / "lr_search.json").is_file():
        extra["lr_search"] = _lr_search_summary(run_dir)
    trackers = create_trackers(config, run_dir) if world.main else []
    try:
        setup = time.perf_counter()
        trainer = Trainer(
            config,
            dataset,
            run_dir=run_dir,
            budget_seconds=world.share(_training_budget(config, started)),
            callbacks=[CheckpointWriter(run_dir), ProgressBars(progress), *trackers]
            if world.main
            else [],
            world=world,
            phases=phases,
        )
        if checkpoint is not None:
            trainer.restore(checkpoint)
            _record_resume(trainer, checkpoint["config"]["lr"], resuming.overrides)
        phases.add("setup", time.perf_counter() - setup)
        trainer.fit()
        if not world.main:  # rank 0 evaluates, exports and reports
            return {}
        metrics = _finish(trainer, run_dir, {"lr": config.lr, **extra})
        for tracker in trackers:
            tracker.finish(run_dir, metrics)
    finally:
        for tracker in trackers:
            tracker.close()
    return metrics


def _audit_data(config: Config, dataset: Dataset, run_dir: Path, progress: bool) -> None:
    """audit.json, audit.csv and audit.html in the run folder before training, and a warning when
    validation or test images are copies of training images (their scores would count them)."""
    splits = {"train": dataset.train, "val": dataset.val, "test": dataset.test}
    result = audit_splits(
        splits, dataset.classes, seed=config.seed, progress=progress, checks=config.audit
    )
    write_audit_of(run_dir, result.to_json(), splits)
    leaked = sum(len(group.paths) for group in result.leaks)
    if result.leaks:
        console.print(
            f"[yellow]warning:[/] {len(result.leaks)} groups of duplicate images ({leaked} images) "
            "span splits: validation scores count images trained on. See "
            f"{run_dir / 'audit.html'}; {leak_advice(config.data)}",
            highlight=False,
        )


def _resumed_checkpoint(
    run_dir: Path, resuming: Resuming | None, dataset: Dataset
) -> dict[str, Any] | None:
    """last.pt of the run to resume, if it got that far, for the same classes and (unless the
    user accepts a change) the same images in the same splits."""
    last = run_dir / "last.pt"
    checkpoint = runs.load_checkpoint(last) if resuming and last.is_file() else None
    if checkpoint is not None:
        _check_same_classes(dataset, checkpoint)
        if not resuming.accept_changed_data:
            _check_same_data(dataset, checkpoint)
    return checkpoint


def _check_same_data(dataset: Dataset, checkpoint: dict[str, Any]) -> None:
    saved = checkpoint.get("data")
    if saved is None:  # a checkpoint of an earlier edgecls
        return
    changes = describe_changes(saved, data_summary(dataset))
    if changes:
        raise UserError(
            f"the data changed since the interrupted run ({changes}): resume with the same data, "
            "or continue anyway with --accept-changed-data"
        )


def _check_before_writing(config: Config, dataset: Dataset, world: World) -> None:
    """Fail before anything is written: a wrong model name, weights file or teacher, a missing
    tracking package, or too few images for the processes.

    The model and teacher are built on the meta device, where every check of building them
    runs but no weights are allocated or copied (the trainer builds them for real)."""
    with on_meta_device():
        create_model(config, len(dataset.classes))
        load_teacher(config, dataset.classes, torch.device("meta"))
    check_trackers(config)
    if len(dataset.train) < 2 * world.size:
        raise UserError(
            f"{len(dataset.train)} training images cannot be shared by {world.size} processes "
            "(each needs 2 per batch): use fewer processes"
        )


def _start_run_folder(
    run_dir: Path, config: Config, plan: dict[str, Any] | None, dataset: Dataset, world: World
) -> None:
    """config.yaml, plan.json and the skipped files written; where the run goes said."""
    runs.write_config(run_dir, config)
    if plan is not None:
        runs.write_json(run_dir / "plan.json", plan)
    console.print(f"run folder: {run_dir}", highlight=False, soft_wrap=True)
    if dataset.storage != "memory":
        console.print(f"images: {dataset.storage}", highlight=False, soft_wrap=True)
    if world.size > 1:
        console.print(f"training in {world.size} processes", highlight=False)
    write_skipped(run_dir, dataset)


def _searched_lr(
    config: Config, dataset: Dataset, run_dir: Path, progress: bool, world: World
) -> Config:
    """The config with the LR its method found: rank 0 searches, the others wait for it."""
    if world.main:
        search = search_lr(config, dataset, run_dir, progress)
        runs.write_json(run_dir / "lr_search.json", search.to_dict())
        console.print(f"initial lr ({search.method}): {search.lr:.4g} in {search.seconds:.0f} s")
        config = dataclasses.replace(config, lr=search.lr)
        runs.write_config(run_dir, config)
    return world.share(config)


def _lr_search_summary(run_dir: Path) -> dict[str, Any]:
    search = runs.read_json(run_dir / "lr_search.json")
    return {
        "method": search["method"],
        "lr": search["lr"],
        "seconds": round(search["seconds"], 2),
        "trials": len(search["trials"]),
    }


def _finish(trainer: Trainer, run_dir: Path, extra: dict[str, Any]) -> dict[str, Any]:
    """best.pt evaluated, exported if asked and reported; metrics.json also says what this took,
    against what a time budget kept for it."""
    finishing = time.perf_counter()
    config = trainer.config
    phases = trainer.phases
    model = trainer.evaluated_model
    # With tta the final scores are those of the exported model: the average of its views.
    set_test_views(model, config)
    with phases.timing("evaluate"):
        metrics = evaluate_best(
            model,
            trainer.dataset,
            run_dir,
            _run_facts(trainer, extra),
            config.eval_batch_size,
            config.channels_last,
            None if views_averaged(config) > 1 else trainer.best_val_logits,
        )
    if config.export:
        from edgecls.deploy.export import export_after_training  # onnx/openvino load slowly

        with phases.timing("export"):
            metrics["exports"] = export_after_training(run_dir, config.export.split(","))
        runs.write_json(run_dir / "metrics.json", metrics)
    with phases.timing("report"):
        plot_history(trainer.state.history, run_dir)
        write_report(run_dir)
    metrics["final_seconds"] = round(time.perf_counter() - finishing, 2)
    metrics["phase_seconds"] = phases.to_dict()
    if trainer.budget is not None:
        metrics["final_seconds_reserved"] = round(trainer.budget.final_seconds, 2)
    runs.write_json(run_dir / "metrics.json", metrics)
    return metrics


def _run_facts(trainer: Trainer, extra: dict[str, Any]) -> dict[str, Any]:
    """What metrics.json says about the training beside the scores, with `extra`."""
    dataset, state, config = trainer.dataset, trainer.state, trainer.config
    return {
        "balance": config.balance,
        "best_epoch": state.best_epoch,
        "keep_epoch": config.keep_epoch,
        "epochs_trained": state.epoch,
        "stopped_early": state.epoch < config.max_epochs,
        "stopped_by": state.stopped_by or "max_epochs",
        "train_seconds": round(state.train_seconds, 2),
        "num_classes": len(dataset.classes),
        "num_train": len(dataset.train.labels),
        "num_val": len(dataset.val.labels),
        "skipped_files": len(dataset.skipped),
        "rollbacks": state.rollbacks,
        "resumes": state.resumes,
        **extra,
    }
