"""The Python API: the one implementation of every `edgecls` command, as functions and a `Run`.

    import edgecls
    run = edgecls.train("photos/", time_budget="5m")
    run.metrics["test"]["top1"], run.history[-1]["val_loss"]
    run.predict(["cat.jpg", pil_image, numpy_array])
    run.export("onnx")
    edgecls.load("runs/x/export/model.onnx").predict("cat.jpg")

The command line parses its options and calls these functions; what it prints is what they
return. Settings are config keys as keyword arguments (`max_epochs=30`); a text value is read
as on the command line (`lr="1e-3"`). Every problem with the input raises `edgecls.EdgeclsError`
with the message the CLI prints.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml
from PIL import Image

from edgecls import config as cfg
from edgecls import runs
from edgecls.console import console, messages_off
from edgecls.data import (
    BadImageError,
    Dataset,
    decoding,
    describe,
    load_dataset,
    load_image,
    printable_path,
    to_pixels,
)
from edgecls.data.images import to_8bit
from edgecls.errors import UserError
from edgecls.phases import Phases
from edgecls.redact import redact

if TYPE_CHECKING:
    from rich.console import Console

    from edgecls.ablate import Row
    from edgecls.data.cache import CacheEntry
    from edgecls.deploy.bench import BenchRow
    from edgecls.deploy.explain import Explained
    from edgecls.deploy.export import ExportReport
    from edgecls.deploy.predict import Prediction
    from edgecls.deploy.runtime import ModelInfo, Predictor
    from edgecls.evaluate.audit import AuditResult
    from edgecls.evaluate.metrics import Metrics
    from edgecls.plan import Plan
    from edgecls.training.distributed import World
    from edgecls.training.lr_search import LRSearchResult

EdgeclsError = UserError  # the one exception type of the API, as of the CLI
MEMORY_DATA_ROOT = Path("runs") / "memory-data"  # where in-memory images are written as files
LOST_A_PROCESS = (
    "error: another training process of this run stopped; the last checkpoint is intact: "
    "continue with edgecls train --resume RUN_FOLDER"
)


def _configure(
    data: str | None,
    recipe: str | None,
    user_values: dict[str, Any],
    started: float | None = None,
) -> tuple[cfg.Config, Plan | None]:
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
    data = cfg.DEFAULT_DATA if config.data is None else config.data
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
        from edgecls.deploy.runtime import load_predictor

        return _predict(load_predictor(self.run_dir), images, top_k)

    def export(self, format: str = "onnx", precision: str = "fp32", **options: Any) -> ExportReport:
        """`edgecls export RUN --format F --precision P`: see `export` for the options."""
        return export(self.run_dir, format, precision, **options)

    def summary(self) -> list[tuple[str, str]]:
        """What `edgecls train` prints at the end, as (label, value) rows: the best epoch, its
        scores, rollbacks, resumes, the training time and the folder."""
        metrics = self.metrics
        rows = [
            runs.kept_epoch_row(metrics),
            runs.stopped_by_row(metrics),
        ]
        for split in ("val", "test"):
            if f"{split}_top1" in metrics:
                scores = (metrics[f"{split}_top1"], metrics[f"{split}_top5"])
                rows.append(
                    (
                        f"{split} top-1 / top-5 / mAP",
                        f"{scores[0]:.2%} / {scores[1]:.2%} / {metrics[f'{split}_map']:.4f}",
                    )
                )
                balanced = metrics[split]["balanced_accuracy"]
                rows.append(
                    (f"{split} balanced accuracy", f"{balanced:.2%} (mean per-class recall)")
                )
        if metrics.get("balance", "none") != "none":
            rows.append(("class balance", str(metrics["balance"])))
        for rollback in metrics["rollbacks"]:
            rows.append(
                (
                    f"rollback at epoch {rollback['epoch']}",
                    f"{rollback['reason']}; back to epoch {rollback['resumed_from_epoch']}, "
                    f"LR x {rollback['lr_scale']:g}",
                )
            )
        for resumed in metrics["resumes"]:
            changes = ", ".join(f"{k}={redact(v)}" for k, v in resumed["overrides"].items())
            rows.append((f"resumed after epoch {resumed['epoch']}", changes or "as saved"))
        rows.append(("training time", f"{metrics['train_seconds']:.0f} s"))
        if metrics["skipped_files"]:
            rows.append(("skipped files", f"{metrics['skipped_files']} (see skipped_files.txt)"))
        rows.append(("run folder", str(self.run_dir)))
        return rows


@dataclass
class Model:
    """An exported model file (ONNX, OpenVINO, TorchScript, TFLite, ncnn) in its runtime."""

    path: Path
    predictor: Predictor

    @property
    def info(self) -> ModelInfo:
        return self.predictor.info

    def predict(self, images: Any, top_k: int = 5) -> list[Prediction]:
        return _predict(self.predictor, images, top_k)


def load(path: str | Path) -> Run | Model:
    """Open a trained run or an exported model.

    Args:
        path: A run folder (or its best.pt), or an exported file (ONNX, OpenVINO XML, ...).

    Returns:
        A `Run` for a run folder or its checkpoint, else a `Model` in its runtime.

    Raises:
        EdgeclsError: No model at `path`, or one its runtime cannot read.
    """
    path = Path(path)
    if path.is_dir() and runs.is_run_folder(path):
        return Run(path)
    if path.suffix == ".pt" and path.is_file() and runs.is_run_folder(path.parent):
        return Run(path.parent)
    from edgecls.deploy.runtime import load_predictor

    return Model(path, load_predictor(path))


def train(
    data: Any = None,
    recipe: str | None = None,
    *,
    run_dir: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
    messages: bool | None = None,
    nproc: int | None = None,
    started: float | None = None,
    plan_console: Console | None = None,
    settings: Mapping[str, Any] | None = None,
    **overrides: Any,
) -> Run | None:
    """Train a classifier on DATA: `edgecls train`.

    Without a recipe, a plan for DATA chooses the model and settings (its tables are shown);
    with one, the recipe's values are used. The user's own settings always win.

    Args:
        data: A folder, a CSV/TXT list of path,label, a built-in name (digits, cifar10, ...),
            or in memory: a list of (PIL image or uint8 array, label) pairs or a
            torchvision-style dataset (items (image, label), optional `classes`), written once
            as PNG files under runs/memory-data/ so that the plan, resume, eval and export read
            them like a folder. None: the recipe's data, else the built-in digits.
        recipe: A shipped recipe's name or a YAML file; None plans the run for DATA.
        run_dir: The run folder (default: a new one under runs/).
        overwrite: Reuse a run folder that already holds files.
        progress: Show progress bars.
        messages: Show console messages (default: as `progress`).
        nproc: Train in this many processes on this machine (DDP through torchrun; batch_size
            is per process); this process waits for them.
        started: `time.monotonic()` when the job began, for a time_budget (default: now).
        plan_console: Where the plan's tables go (default: the console, with progress on).
        settings: Config keys and values as a mapping (the command line's key=value pairs);
            `overrides` win over them.
        **overrides: Config keys and values (max_epochs=30, lr="auto", ...).

    Returns:
        The trained run; None in a process that is not the first of a multi-process run, and
        in the process that launched `nproc` processes (their first reports).

    Raises:
        EdgeclsError: Bad data, settings, recipe or run folder.
        SystemExit: One of several training processes failed (the reason is printed).
    """
    started = time.monotonic() if started is None else started
    overrides = {**(settings or {}), **overrides}
    if data is not None and not isinstance(data, (str, Path)):
        data = write_memory_data(data, progress=progress)
    data = str(data) if data else None
    if _launches(nproc):
        options = _options(recipe=recipe, run_dir=run_dir, overwrite=overwrite, quiet=not progress)
        return _launch(nproc, ["train", *([data] if data else []), *options, *_pairs(overrides)])
    if data is not None and Path(data).exists():  # decoding's worker server starts beside torch
        decoding.start_early()
    # torch, timm and the training loop load here, counted as the run's startup
    from edgecls.training import distributed, pipeline  # noqa: F401

    world = distributed.join()
    user_values = _typed(overrides)
    phases = Phases(started)
    with messages_off(not (progress if messages is None else messages)), phases.timing("plan"):
        config, plan = world.share(
            _configure(data, recipe, user_values, started) if world.main else None
        )
    with messages_off(not (progress if messages is None else messages)):
        if plan is not None and world.main and (plan_console is not None or progress):
            show_plan(plan, plan_console or console)
        return _train_here(
            config,
            Path(run_dir) if run_dir else None,
            world,
            started,
            overwrite=overwrite,
            plan=plan,
            progress=progress,
            phases=phases,
        )


def resume(
    run_dir: str | Path,
    *,
    accept_changed_data: bool = False,
    progress: bool = True,
    messages: bool | None = None,
    nproc: int | None = None,
    started: float | None = None,
    settings: Mapping[str, Any] | None = None,
    **overrides: Any,
) -> Run | None:
    """Continue a stopped run with its saved config: `edgecls train --resume RUN`.

    Training continues from last.pt, or, if the run stopped during the LR search, the search
    continues from its stored trials.

    Args:
        run_dir: The run folder.
        accept_changed_data: Continue although the data changed since the run stopped (images
            added or removed, a validation split drawn differently); refused otherwise.
        progress: Show progress bars.
        messages: Show console messages (default: as `progress`).
        nproc: Continue in this many processes on this machine (DDP through torchrun).
        started: `time.monotonic()` when the job began, for a time_budget (default: now).
        settings: Config keys and values as a mapping (the command line's key=value pairs);
            `overrides` win over them.
        **overrides: Settings that may change for the rest of the run (`config.RESUME_KEYS`:
            max_epochs, patience, a numeric lr, export, ...).

    Returns:
        The run, as `train` returns it.

    Raises:
        EdgeclsError: Nothing to resume in `run_dir`, or a setting that would make it another run.
        SystemExit: One of several training processes failed (the reason is printed).
    """
    started = time.monotonic() if started is None else started
    overrides = {**(settings or {}), **overrides}
    if _launches(nproc):
        options = _options(
            resume=run_dir, accept_changed_data=accept_changed_data, quiet=not progress
        )
        return _launch(nproc, ["train", *options, *_pairs(overrides)])
    from edgecls.training import distributed

    world = distributed.join()
    run_dir = Path(run_dir)
    config, changed = cfg.resume_config(runs.read_config(run_dir), _typed(overrides))
    with messages_off(not (progress if messages is None else messages)):
        return _train_here(
            config,
            run_dir,
            world,
            started,
            resume=True,
            changed=changed,
            accept_changed_data=accept_changed_data,
            progress=progress,
        )


def plan_run(
    data: str | None = None,
    recipe: str | None = None,
    *,
    started: float | None = None,
    settings: Mapping[str, Any] | None = None,
    **overrides: Any,
) -> Plan:
    """The plan `train` would follow for DATA, without training: `edgecls train --plan`.

    Args:
        data: As for `train` (a folder, list file or built-in name).
        recipe: Must be None: a recipe replaces the plan.
        started: `time.monotonic()` when the job began, for a time_budget (default: now).
        settings: Config keys and values as a mapping (the command line's key=value pairs);
            `overrides` win over them.
        **overrides: Config keys and values; the plan keeps them.

    Returns:
        The plan: the measured candidates, the values chosen and the reasons.

    Raises:
        EdgeclsError: Bad data or settings, or a recipe given.
    """
    overrides = {**(settings or {}), **overrides}
    _, plan = _configure(data, recipe, _typed(overrides), started)
    if plan is None:
        raise UserError("--plan plans a run for DATA without a recipe")
    return plan


def show_plan(plan: Plan, where: Console = console) -> None:
    """Print the plan's tables (the candidates measured, the choice and its reasons), if it
    measured any."""
    from edgecls.plan.table import plan_tables

    if plan.candidates:
        for table in plan_tables(plan):
            where.print(table)


def _train_here(
    config: cfg.Config,
    run_dir: Path | None,
    world: World,
    started: float,
    *,
    overwrite: bool = False,
    resume: bool = False,
    changed: dict[str, Any] | None = None,
    accept_changed_data: bool = False,
    plan: Plan | None = None,
    progress: bool = True,
    phases: Phases | None = None,
) -> Run | None:
    """Train in this process (one of `world`); a lost peer process ends it with status 1."""
    from edgecls.training import distributed
    from edgecls.training import train as run_training

    try:
        trained = run_training(
            config,
            run_dir,
            resume=resume,
            overwrite=overwrite,
            resume_overrides=changed,
            accept_changed_data=accept_changed_data,
            progress=progress,
            started=started,
            plan=plan.to_dict() if plan else None,
            world=world,
            phases=phases or Phases(started),
        )
    except RuntimeError as error:
        if not distributed.lost_a_process(error):
            raise
        if world.main:
            print(LOST_A_PROCESS, file=sys.stderr)
        raise SystemExit(1) from None
    return Run(trained.run_dir) if world.main else None


def _launches(nproc: int | None) -> bool:
    """Whether this process starts `nproc` training processes (it is not one of them)."""
    from edgecls.training.launcher import under_torchrun

    return nproc is not None and nproc > 1 and not under_torchrun()


def _launch(nproc: int, argv: list[str]) -> None:
    """`edgecls ARGV` in `nproc` processes under torchrun; their failure is this one's."""
    from edgecls.training.launcher import launch

    status = launch(nproc, argv)
    if status:
        raise SystemExit(status)


def _options(**options: Any) -> list[str]:
    """Command-line options: `--name VALUE` for each value given, `--name` for each true flag."""
    argv: list[str] = []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value is not None and value is not False:
            argv += [flag, str(value)]
    return argv


def _pairs(overrides: dict[str, Any]) -> list[str]:
    """Settings as the command line's key=value texts."""
    return [f"{key}={_as_text(value)}" for key, value in overrides.items()]


def _typed(overrides: dict[str, Any]) -> dict[str, Any]:
    """Settings typed as the command line types key=value, so both are checked alike."""
    return cfg.parse_overrides(_pairs(overrides))


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
    data_root: str | None = None,
    progress: bool = False,
) -> DataCheck:
    """What was found in DATA, per split and class, and every problem: `edgecls check-data`.

    Unreadable files and other problems are reported, not raised, so that one look shows them
    all.

    Args:
        data: A folder, a CSV/TXT list of path,label, or a built-in name.
        input_size: The side images are resized to.
        grayscale: Read images as one channel.
        val_fraction: The share of a folder without val/ that is held out for validation.
        seed: The seed of that split.
        data_root: Root folder for torchvision datasets.
        progress: Show progress bars while reading.

    Returns:
        The report (`text`), the dataset and `ok`: False when training would refuse it.

    Raises:
        EdgeclsError: DATA does not exist or names no known dataset.
    """
    dataset = load_dataset(
        str(data),
        input_size=input_size,
        grayscale=grayscale,
        val_fraction=val_fraction,
        seed=seed,
        data_root=data_root,
        strict=False,
        progress=progress,
    )
    return DataCheck(dataset, describe(dataset))


@dataclass
class Audit:
    """What `edgecls check-data --audit` found (`result`), the files it wrote, and the list-file
    dataset `fix_splits` wrote (None without it)."""

    result: AuditResult
    out_dir: Path
    written: list[Path]
    fixed: Path | None = None


def audit(
    data: str | Path,
    *,
    out_dir: str | Path = "audit",
    fix_splits: str | Path | None = None,
    input_size: int = 64,
    grayscale: bool = False,
    val_fraction: float = 0.2,
    seed: int = 0,
    data_root: str | None = None,
    progress: bool = False,
) -> Audit:
    """Duplicates (exact and near, within and across splits), likely label errors and outliers
    in DATA, written to OUT_DIR as audit.json, audit.csv and audit.html: `edgecls check-data
    --audit`. No file of DATA is written.

    Args:
        data: A folder, a CSV/TXT list of path,label, or a built-in name.
        out_dir: Where the audit's files go.
        fix_splits: A folder to write train.csv, val.csv (and test.csv) into: the same images
            and labels with every duplicate that leaks across splits moved into train.
        input_size: The side images are decoded at (thumbnails and pixel features).
        grayscale: Read images as one channel (the network sees it repeated three times).
        val_fraction: The share of a folder without val/ that is held out for validation.
        seed: The seed of that split and of the cross-validation folds.
        data_root: Root folder for torchvision datasets.
        progress: Show progress bars.

    Returns:
        The findings, the files written and the fixed dataset's folder.

    Raises:
        EdgeclsError: DATA cannot be loaded as a trainable dataset (no images, none readable,
            one class), or an output folder is inside DATA or cannot be written.
    """
    from edgecls.evaluate.audit import audit_splits

    out, fixed = Path(out_dir), Path(fix_splits) if fix_splits is not None else None
    if fixed is not None and not Path(data).exists():
        raise UserError(
            f"--fix-splits writes a list of image files: {data} is not a folder or list"
        )
    for folder in (out, fixed):
        if folder is not None:
            _outside_data(folder, Path(data))
            runs.check_folder_writable(folder)
    dataset = load_dataset(
        str(data),
        input_size=input_size,
        grayscale=grayscale,
        val_fraction=val_fraction,
        seed=seed,
        data_root=data_root,
        progress=progress,
    )
    splits = {"train": dataset.train, "val": dataset.val, "test": dataset.test}
    result = audit_splits(splits, dataset.classes, seed=seed, progress=progress)
    if dataset.skipped:
        result.notes.insert(0, _skipped_note(dataset.skipped))
    from edgecls.report.audit import write_audit_of

    written = write_audit_of(out, result.to_json(), splits)
    if fixed is not None:
        _write_fixed_splits(fixed, result, splits)
    return Audit(result, out, written, fixed)


def _skipped_note(skipped: list[tuple[str, str]], shown: int = 3) -> str:
    """Files the loader could not read are not audited: say which, so that none goes unseen."""
    listed = "; ".join(f"{path} ({reason})" for path, reason in skipped[:shown])
    more = ""
    if len(skipped) > shown:
        more = f"; and {len(skipped) - shown} more (edgecls check-data lists them)"
    return f"{len(skipped)} unreadable or missing file(s) not audited: {listed}{more}"


def _outside_data(folder: Path, data: Path) -> None:
    """Refuse an output folder that is DATA or inside it: the audit never writes the data."""
    if data.exists():
        root = data.resolve() if data.is_dir() else data.resolve().parent
        if folder.resolve().is_relative_to(root):
            raise UserError(f"{folder} is inside the data folder {root}: choose another folder")


def _write_fixed_splits(folder: Path, result: AuditResult, splits: dict[str, Any]) -> None:
    from edgecls.data.sources import list_file_text
    from edgecls.evaluate.audit import fixed_splits

    rows = fixed_splits(result, splits)
    missing = [path for split in rows.values() for path, _ in split if not Path(path).is_file()]
    if missing:
        raise UserError(
            f"--fix-splits writes a list of image files, and {missing[0]} is not one "
            "(a built-in dataset): audit a folder or a list file"
        )
    folder.mkdir(parents=True, exist_ok=True)
    for name, split_rows in rows.items():
        runs.write_text(folder / f"{name}.csv", list_file_text(split_rows))


@dataclass
class LRFind:
    """What `lr_find` found, and the folder with its plot, trials and study."""

    result: LRSearchResult
    out_dir: Path


def lr_find(
    data: str | None = None,
    recipe: str | None = None,
    *,
    model: str | None = None,
    method: str = "range",
    out_dir: str | Path | None = None,
    workers: int = 1,
    worker_index: int = 0,
    progress: bool = True,
    settings: Mapping[str, Any] | None = None,
    **overrides: Any,
) -> LRFind:
    """Estimate the initial learning rate for DATA alone: `edgecls lr-find`.

    Args:
        data: A folder, list file or built-in name (default: the recipe's).
        recipe: A recipe name or YAML file (model, input size, ...); without one, the range
            test or search runs on what `edgecls train DATA` would train (the plan's model,
            input size, batch size and augmentation, under the user's values).
        model: Any timm model name.
        method: range (the LR range test), tpe or grid.
        out_dir: Where the plot, trials and study go (default: runs/lr-find-<auto>).
        workers: Run the tpe or grid trials in this many local processes sharing one study (a
            journal file in `out_dir`, or lr_search_storage=URL); the same call on other
            machines with the same lr_search_storage joins the study.
        worker_index: This process's number among the workers (0: the one that reports).
        progress: Show progress bars.
        settings: Config keys and values as a mapping (the command line's key=value pairs);
            `overrides` win over them.
        **overrides: Config keys and values.

    Returns:
        The suggested LR with the trials or curve behind it (also in lr_search.json), and the
        folder.

    Raises:
        EdgeclsError: No data, bad settings, workers with the range test, or a worker failed.
    """
    from edgecls.data import load_configured_dataset
    from edgecls.training.lr_search import run_workers, search_lr, shared_storage, storage_url

    overrides = {**(settings or {}), **overrides}
    if workers > 1 and method == "range":
        raise UserError("--workers runs trials in parallel: use it with --method tpe or grid")
    user = {**_typed(overrides), **({"model": model} if model else {})}
    planned = recipe is None and data is not None
    if planned:  # the LR of what `edgecls train DATA` would train
        config = dataclasses.replace(_configure(data, None, user)[0], lr=method)
        weights = "ImageNet weights" if config.pretrained else "from scratch"
        console.print(
            f"lr-find for the planned run: {config.model} ({weights}) at "
            f"{config.input_size} px, batch {config.batch_size}",
            highlight=False,
            soft_wrap=True,
        )
    else:
        layers = [cfg.load_recipe(recipe) if recipe else {}, user]
        config = cfg.build_config(*layers, {"lr": method, **({"data": data} if data else {})})
    if config.data is None:
        raise UserError("lr-find needs DATA (or a recipe that names one)")
    out_dir = Path(out_dir) if out_dir else runs.auto_run_dir(config, prefix="lr-find")
    runs.check_folder_writable(out_dir)
    config = shared_storage(config, out_dir, workers)
    # The workers get the storage URL in their environment: `ps` shows command lines.
    shared = {k: v for k, v in overrides.items() if k != "lr_search_storage"}
    if planned and workers > 1:  # the other workers search this plan, not one of their own
        recipe = str(_write_planned(config, out_dir))
    command = ["lr-find", *([data] if data else []), *_pairs(shared)]
    command += _options(method=method, quiet=True, recipe=recipe, model=model)
    with run_workers(command, out_dir, workers - 1, storage_url(config)):
        dataset = load_configured_dataset(config, progress=progress)  # while the others start
        result = search_lr(config, dataset, out_dir, progress=progress, worker=worker_index)
    runs.write_json(out_dir / "lr_search.json", result.to_dict())
    return LRFind(result, out_dir)


def _write_planned(config: cfg.Config, out_dir: Path) -> Path:
    """The planned config as a recipe file in `out_dir`, for processes that should not plan."""
    skipped = {"lr", "data", "recipe", "lr_search_storage"}
    values = {k: v for k, v in runs.saved_config(config).items() if k not in skipped}
    out_dir.mkdir(parents=True, exist_ok=True)
    runs.write_text(out_dir / "planned.yaml", yaml.safe_dump(values, sort_keys=False))
    return out_dir / "planned.yaml"


@dataclass
class Ablation:
    """The rows `ablate` trained (mean and spread over seeds), and the folder of its tables."""

    rows: list[Row]
    out_dir: Path

    @property
    def markdown(self) -> str:
        return (self.out_dir / "ablation.md").read_text()


def ablate(
    recipe: str | None,
    stack: str,
    data: str | None = None,
    *,
    leave_one_out: bool = False,
    seeds: int = 1,
    out_dir: str | Path | None = None,
    progress: bool = True,
    settings: Mapping[str, Any] | None = None,
    **overrides: Any,
) -> Ablation:
    """Train RECIPE with tricks added one at a time, or each left out: `edgecls ablate`.

    Args:
        recipe: The recipe the tricks are added to (or left out of); None: the config
            `edgecls train DATA` would plan with these settings (a time_budget, ...), planned
            once for every row.
        stack: Tricks in order, comma-separated: a key (label_smoothing, mixup, ...: the
            papers' value) or key=value (teacher=runs/big).
        data: A folder, list file or built-in name (default: the recipe's, else digits).
        leave_one_out: Each trick left out of the full stack instead of added in turn.
        seeds: Train every row with this many seeds.
        out_dir: An empty or new folder (default: runs/ablate-<recipe>-<time>).
        progress: Show progress bars.
        settings: Config keys and values as a mapping (the command line's key=value pairs);
            `overrides` win over them.
        **overrides: Config keys and values for every row (max_epochs=30, ...).

    Returns:
        The rows, and the folder with ablation.md, ablation.csv and ablation.png.

    Raises:
        EdgeclsError: An unknown trick or setting, or a folder that already holds files.
    """
    from edgecls.ablate import ablate as run_ablation
    from edgecls.ablate import parse_stack

    overrides = {**(settings or {}), **overrides}
    tricks = parse_stack(stack)
    if recipe is None:
        base = _configure(data or cfg.DEFAULT_DATA, None, _typed(overrides))[0]
        name = "plan"
    else:
        values = {**_typed(overrides), **({"data": data} if data else {})}
        base = cfg.build_config(cfg.load_recipe(recipe), values)
        if base.data is None:
            base = dataclasses.replace(base, data=cfg.DEFAULT_DATA)
        name = Path(recipe).stem
    out_dir = Path(out_dir or Path("runs") / f"ablate-{name}-{time.strftime('%Y%m%d-%H%M%S')}")
    runs.check_folder_writable(out_dir)  # a file, or a folder under one, is refused here
    if out_dir.exists() and any(out_dir.iterdir()):
        raise UserError(f"{out_dir} is not empty: name another --out")
    rows = run_ablation(
        base, name, tricks, out_dir, leave_one_out=leave_one_out, seeds=seeds, progress=progress
    )
    return Ablation(rows, out_dir)


@dataclass
class Comparison:
    """The runs `compare` read, best first, and the config keys whose values differ."""

    rows: list[dict[str, Any]]
    differing: list[str]
    saved: list[Path]  # compare.md and compare.csv

    @property
    def markdown(self) -> str:
        from edgecls.report.compare import markdown_table

        return markdown_table(self.rows, self.differing)


def compare(
    run_dirs: Sequence[str | Path],
    *,
    sort: str = "top1",
    out_dir: str | Path = Path("runs/compare"),
) -> Comparison:
    """A table of runs sorted by a metric: `edgecls compare`.

    Args:
        run_dirs: Run folders, or folders of runs (like runs/).
        sort: top1, top5, map (best first), wall_s, latency_ms (lowest first) or epochs.
        out_dir: Where compare.md and compare.csv go.

    Returns:
        The rows and the settings that differ between them, and the files saved.

    Raises:
        EdgeclsError: No run folder among the paths, an unknown sort key, or `out_dir` not
            writable.
    """
    from edgecls.report.compare import compare_runs, save_comparison

    folders = []
    for path in map(Path, run_dirs):
        if path.is_dir() and not runs.is_run_folder(path) and runs.holds_run_folders(path):
            folders += sorted(child for child in path.iterdir() if runs.is_run_folder(child))
        else:
            folders.append(path)
    runs.check_folder_writable(Path(out_dir))
    rows, differing = compare_runs(folders, sort)
    return Comparison(rows, differing, save_comparison(rows, differing, Path(out_dir)))


@dataclass
class Evaluation:
    """What `evaluate` measured: the split, its metrics and where they were saved."""

    split: str
    metrics: Metrics
    out_dir: Path
    robustness: dict[str, Any] | None = None  # robustness.json, with corruptions


def evaluate(
    model: str | Path,
    data: str,
    *,
    split: str = "auto",
    out_dir: str | Path | None = None,
    data_root: str | None = None,
    corruptions: bool = False,
    reference: str | Path | None = None,
    corruption_images: int = 1000,
) -> Evaluation:
    """Top-1, top-5, mAP, per-class table and confusion matrix of MODEL on DATA: `edgecls eval`.

    Args:
        model: A run folder or checkpoint (.pt).
        data: A folder, list file or built-in name with the model's classes.
        split: auto (test if DATA has one, else val), train, val, test or all.
        out_dir: Where metrics.json and the confusion matrix go (default: RUN/eval/<data>-<split>).
        data_root: Root folder for torchvision datasets.
        corruptions: Also top-1 under 10 common corruptions at 5 severities, mCE and flip rates.
        reference: A run (or .pt) that mCE and mFR are relative to (with `corruptions`).
        corruption_images: Images (a seeded subset of the split) the corruptions are measured on.

    Returns:
        The split measured, its metrics, the folder they were saved in and, with
        `corruptions`, the robustness results.

    Raises:
        EdgeclsError: No readable checkpoint, classes the model does not know, or a bad option.
    """
    from edgecls.evaluate.checkpoint import evaluate_checkpoint

    if out_dir:
        runs.check_folder_writable(Path(out_dir))
    if reference is not None and not corruptions:
        raise UserError("--reference is the model mCE is relative to: add --corruptions")
    split_name, metrics, saved = evaluate_checkpoint(
        Path(model),
        data,
        split=split,
        out_dir=Path(out_dir) if out_dir else None,
        data_root=data_root,
        corruptions=corruptions,
        reference=Path(reference) if reference is not None else None,
        corruption_images=corruption_images,
    )
    robustness = runs.read_json(saved / "robustness.json") if corruptions else None
    return Evaluation(split_name, metrics, saved, robustness)


def predict(
    model: str | Path,
    inputs: Sequence[str | Path],
    *,
    top_k: int = 5,
    csv_path: str | Path | None = None,
) -> tuple[list[Prediction], list[tuple[str, str]]]:
    """Top-k labels with probabilities for image files or folders: `edgecls predict`.

    Unreadable images are skipped and listed, so that one bad file does not stop a folder.

    Args:
        model: A run folder, checkpoint, ONNX file or OpenVINO IR.
        inputs: Image files or folders of them.
        top_k: How many labels per image.
        csv_path: Also write the predictions to this CSV file.

    Returns:
        The predictions, and (path, reason) for each image that could not be read.

    Raises:
        EdgeclsError: No model at `model`, or none of the images could be read.
    """
    from edgecls.deploy.predict import predict_images, write_predictions_csv

    if csv_path:
        runs.check_folder_writable(Path(csv_path).parent)
    predictions, skipped = predict_images(Path(model), [Path(p) for p in inputs], top_k)
    if not predictions:
        path, reason = skipped[0]
        more = f" (and {len(skipped) - 1} more)" if len(skipped) > 1 else ""
        raise UserError(f"none of the given images could be read: {path}: {reason}{more}")
    if csv_path:
        write_predictions_csv(predictions, Path(csv_path))
    return predictions, skipped


def explain(
    model: str | Path,
    inputs: Sequence[str | Path],
    *,
    out_dir: str | Path = Path("runs/explain"),
    method: str = "auto",
) -> Explained:
    """Saliency overlays (heat map over the image) of MODEL's predictions: `edgecls explain`.

    Unreadable images are skipped and listed, as by `predict`; the images are only read.

    Args:
        model: A run folder, checkpoint, or exported model (ONNX, OpenVINO IR, TorchScript, ...).
        inputs: Image files or folders of them.
        out_dir: Where the overlays (`000_<image>_<label>_<percent>.png`) and explain.html go:
            a new or empty folder, or one an earlier `explain` wrote.
        method: auto (Grad-CAM for a checkpoint, occlusion for an exported model), gradcam
            (checkpoints only: it needs gradients) or occlusion (any model, forward passes only).

    Returns:
        The overlays with each image's predicted label and probability, the images skipped,
        the index page and the method used.

    Raises:
        EdgeclsError: No model at `model`, no readable image, an `out_dir` holding other files
            or inside an image folder, or Grad-CAM asked of an exported model.
    """
    from edgecls.deploy.explain import explain_images

    return explain_images(Path(model), [Path(p) for p in inputs], Path(out_dir), method)


def export(
    model: str | Path, format: str = "onnx", precision: str = "fp32", **options: Any
) -> ExportReport:
    """Export MODEL for a runtime, checked against the checkpoint: `edgecls export`.

    Args:
        model: A run folder or checkpoint (.pt).
        format: onnx, openvino, torchscript, tflite, ncnn or coreml.
        precision: fp32, fp16 or int8.
        **options: out_dir (default: RUN/export), data (for the checks and INT8 calibration;
            default: the training data named in the checkpoint), calibration_size, seed, opset
            (ONNX; default 17) and max_drop (INT8: points of top-1 it may lose against FP32;
            over it, FP32 is recommended instead).

    Returns:
        The report: the file, its agreement with the checkpoint, sizes and latencies.

    Raises:
        EdgeclsError: An unknown format or precision, a missing converter, or no checkpoint.
    """
    from edgecls.deploy.export import export_model

    if options.get("out_dir"):
        options["out_dir"] = Path(options["out_dir"])
        runs.check_folder_writable(options["out_dir"])
    return export_model(Path(model), format, precision, **options)


@dataclass
class Benchmark:
    """What `bench` measured: a row per model, backend and precision, the fastest choices and
    the files saved."""

    rows: list[BenchRow]
    fastest: list[str]  # per model, the fastest choice within max_drop, as a sentence
    saved: tuple[Path, Path]  # OUT.csv and OUT.json


def bench(
    models: Sequence[str],
    *,
    input_size: int = 224,
    batch: int = 1,
    backends: Sequence[str] | None = None,
    precisions: Sequence[str] = ("fp32",),
    max_drop: float = 1.0,
    repeats: int = 50,
    warmup: int = 10,
    num_classes: int = 1000,
    out_path: str | Path = Path("runs/bench/bench"),
) -> Benchmark:
    """Parameters, GFLOPs, size, memory, latency and FPS per backend and precision, and the
    fastest choice within `max_drop`: `edgecls bench`.

    Args:
        models: timm names, checkpoints or exported files.
        input_size: The image side for timm names.
        batch: Images per call.
        backends: torch, onnxruntime, openvino, litert, ncnn (default: every one installed).
        precisions: fp32, bf16 (OpenVINO, if the CPU has it), int8 (ONNX Runtime, OpenVINO,
            LiteRT).
        max_drop: Points of top-1 the recommended choice may lose (measured for checkpoints).
        repeats: Timed calls.
        warmup: Calls before timing.
        num_classes: The classifier size for timm names.
        out_path: Saved as OUT.csv and OUT.json.

    Returns:
        The rows, the fastest choices and the files saved.

    Raises:
        EdgeclsError: An unknown or missing backend or precision, or a model that cannot load.
    """
    from edgecls.deploy.bench import (
        bench_model,
        check_choices,
        fastest_lines,
        installed_backends,
        save_rows,
    )

    backends = list(backends or installed_backends())
    check_choices(backends, list(precisions))
    runs.check_folder_writable(Path(out_path).parent)
    rows = []
    for spec in models:
        console.print(f"benchmarking {spec} ...", highlight=False, markup=False, soft_wrap=True)
        rows += bench_model(
            spec, backends, list(precisions), input_size, batch, repeats, warmup, num_classes
        )
    return Benchmark(rows, fastest_lines(rows, max_drop), save_rows(rows, Path(out_path)))


def config_keys(pattern: str | None = None) -> list[cfg.KeyDoc]:
    """Every config key (or those whose name contains `pattern`) with its type, default, allowed
    values and help: what `key=value` accepts, read from the one declaration of each key.

    Args:
        pattern: A part of a key's name, e.g. `lr` or `mix`; None lists every key.

    Returns:
        The keys in declaration order.
    """
    return [key for key in cfg.describe_keys() if pattern is None or pattern in key.name]


def cache_entries(cache_dir: str | Path | None = None) -> list[CacheEntry]:
    """The entries of the disk image cache (one per dataset, input size and channels decoded),
    least recently used first.

    Args:
        cache_dir: The cache's folder; None: `$EDGECLS_CACHE_DIR` or `~/.cache/edgecls/images`.
    """
    from edgecls.data.cache import list_cache

    return list_cache(cache_dir)


def clean_cache(
    cache_dir: str | Path | None = None, older_than_days: float = 0.0
) -> tuple[list[CacheEntry], list[CacheEntry]]:
    """Remove the disk cache's entries not used for `older_than_days` days (0: all of them). A
    removed entry is decoded again by the next run that needs it; only files the cache wrote are
    deleted, and an entry a run is writing is left alone.

    Returns:
        The entries removed, and those left because a run was writing them.
    """
    from edgecls.data.cache import remove_entry

    cutoff = time.time() - older_than_days * 86400
    old = [entry for entry in cache_entries(cache_dir) if entry.last_used <= cutoff]
    removed = [entry for entry in old if remove_entry(entry)]
    return removed, [entry for entry in old if entry not in removed]


def _predict(predictor: Predictor, images: Any, top_k: int = 5) -> list[Prediction]:
    """Top-k labels for image paths or folders, PIL images or uint8 arrays (H, W) / (H, W, 3),
    one or a list; an unreadable file raises EdgeclsError naming it."""
    items = images if isinstance(images, (list, tuple)) else [images]
    info = predictor.info
    names, tensors = [], []
    for index, item in enumerate(items):
        for name, image in _images_of(item, index):
            names.append(name)
            tensors.append(to_pixels(to_8bit(image, info.grayscale), info.input_size))
    if not tensors:
        raise UserError("no images to predict")
    from edgecls.deploy.predict import Prediction, top_labels

    probabilities = predictor.predict_proba(np.stack(tensors))
    return [
        Prediction(name, *top_labels(row, info.classes, top_k))
        for name, row in zip(names, probabilities, strict=True)
    ]


def _images_of(item: Any, index: int) -> Iterable[tuple[str, Image.Image]]:
    if isinstance(item, (str, Path)):
        from edgecls.deploy.predict import expand_inputs

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
    if type(item).__module__ == "torch":  # a tensor
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
        if type(label).__module__ == "torch":  # a tensor
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
