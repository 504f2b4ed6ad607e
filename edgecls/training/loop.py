"""The training loop (paper 000, Algorithm 1 in spirit).

    data, model, optimizer, schedule  <- config
    for each epoch until the schedule says stop:
        set the epoch's LR (warmup, plateau reductions)
        train one epoch              (the `step` hook does forward/backward/update)
        evaluate on validation       (top-1 picks the best checkpoint)
        callbacks: best.pt, last.pt, history.csv, progress

The pieces a trick plugs into: the objective (`build_objective`), the update strategy (plain or
SAM, `create_update`), the schedule, and callbacks around epochs and steps.

Every epoch draws its randomness from a generator seeded by (seed, epoch), and the checkpoint
holds the optimizer, schedule and RNG states, so a resumed run repeats an uninterrupted one.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from timm.utils import ModelEmaV3
from torch.nn.modules.batchnorm import _BatchNorm

from edgecls import runs
from edgecls.config import Config
from edgecls.console import console
from edgecls.data import Dataset, ImageSplit
from edgecls.data.splits import data_summary
from edgecls.device import mixed_precision, select_device
from edgecls.evaluate import Metrics, compute_metrics
from edgecls.evaluate.inference import predict_logits
from edgecls.models import Classifier, create_model, views_averaged
from edgecls.models.whitening import whiten_stem
from edgecls.phases import Phases
from edgecls.training.augment import num_batches, progressive_side, training_batches
from edgecls.training.callbacks import Callback
from edgecls.training.distributed import SINGLE, World, device_of, replicate
from edgecls.training.early_stopping import create_early_stopping
from edgecls.training.linear_probe import fit_linear_head
from edgecls.training.losses import Objective, build_objective, class_weights, load_teacher
from edgecls.training.mixing import BatchTransform, create_batch_transform
from edgecls.training.optim import UpdateStrategy, create_optimizer, create_update, scaled_lr
from edgecls.training.schedules import Schedule, TimeBudget, create_schedule


@dataclass
class RunState:
    """What the loop carries from epoch to epoch (and through a resume)."""

    epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    best_top1: float = -1.0
    best_loss: float = math.inf  # of the best epoch: it breaks ties in top-1
    best_epoch: int = 0
    train_seconds: float = 0.0
    stopped: bool = False
    stopped_by: str = ""  # what ended the run, a key of runs.STOP_REASONS; "" while it runs
    lr_scale: float = 1.0  # applied on top of the schedule: divergence rollbacks, resume overrides
    rollbacks: list[dict[str, Any]] = field(default_factory=list)
    resumes: list[dict[str, Any]] = field(default_factory=list)
    updates: int = 0  # optimizer updates so far: the EMA's warmup counts them


class Diverged(Exception):
    """Non-finite losses or validation outputs that skipping single batches could not cure."""


# A non-finite batch loss skips that update; this many in a row count as divergence.
MAX_NONFINITE_BATCHES = 3
FINAL_WRITE_SECONDS = 3.0  # metrics, plots and the summary after training


def better_epoch(top1: float, loss: float, best_top1: float, best_loss: float) -> bool:
    """Validation top-1 picks the best epoch, and a lower validation loss breaks its ties: on
    40 validation images top-1 moves in steps of 2.5%, and the first epoch to reach the highest
    step, early and at a high LR, scored 95.7% on digits-200's test images where the last one,
    as high on validation with a third of the loss, scored 98.4%."""
    return top1 > best_top1 or (top1 == best_top1 and loss < best_loss)


def kept_epoch(keep_epoch: str, val: Metrics, state: RunState) -> bool:
    """Whether this epoch's weights replace best.pt's: under `keep_epoch=last` every epoch's do."""
    return keep_epoch == "last" or better_epoch(
        val.top1, val.loss, state.best_top1, state.best_loss
    )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """Shuffling and augmentation randomness that depends only on (seed, epoch)."""
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


def set_lr(optimizer, lr: float) -> None:
    """Every parameter group follows the schedule in proportion to its own `lr_scale`."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def rng_states() -> dict[str, Any]:
    """The global RNG states as tensors and plain types, which `torch.load(weights_only=True)`
    reads back without unpickling arbitrary objects."""
    name, keys, position, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss],
        "torch": torch.get_rng_state(),
    }


def restore_rng(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    name, keys, position, has_gauss, gauss = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    torch.set_rng_state(states["torch"])


def create_models(config: Config, num_classes: int) -> list[Classifier]:
    """The model to keep, plus under mutual learning its AM-Softmax (s=1, m=0) slow partner."""
    models = [create_model(config, num_classes)]
    if config.mutual:
        slow = dataclasses.replace(config, head="am_softmax", am_scale=1.0, am_margin=0.0)
        models.append(create_model(slow, num_classes))
    return models


class Trainer:
    """Owns the models, objective, optimizer, update strategy and schedule of one run; `fit` is
    the epoch loop. Everything beside training (checkpoints, history, progress) is a callback.

    `run_dir` is where a diverging run rolls back from (its last.pt; None: the start);
    `budget_seconds` is the training time of a budgeted run: training stops when another epoch
    would not fit. In a `world` of several processes each trains its shard of every batch
    through DistributedDataParallel replicas, and they agree on every decision.
    """

    def __init__(
        self,
        config: Config,
        dataset: Dataset,
        *,
        run_dir: Path | None = None,
        budget_seconds: float | None = None,
        callbacks: Sequence[Callback] = (),
        world: World = SINGLE,
        phases: Phases | None = None,
    ):
        self.config = config
        self.world = world
        self.phases = phases or Phases()
        # validation logits of the last evaluation, and of the best epoch's weights (best.pt's):
        # the final evaluation reuses them instead of another pass over validation
        self.evaluated_logits: torch.Tensor | None = None
        self.best_val_logits: torch.Tensor | None = None
        self.run_dir = run_dir
        self.dataset = dataset
        self.callbacks = list(callbacks)
        self.device = device_of(world, select_device(config.device))
        self.memory_format = torch.channels_last if config.channels_last else torch.preserve_format
        seed_everything(config.seed)
        self.models = [
            m.to(self.device, memory_format=self.memory_format)
            for m in create_models(config, len(dataset.classes))
        ]
        self.model = self.models[0]
        if config.normalize == "train":
            statistics = dataset.train.channel_statistics()
            for model in self.models:
                model.set_normalization(*statistics)
        if config.whiten_stem:  # the same filters in every process: a seeded sample
            whiten_stem(self.model, dataset.train.images, config.seed)
        if config.linear_probe:  # the same fit in every process: the same head
            fit_linear_head(
                self.model,
                dataset.train.images,
                dataset.train.labels,
                len(dataset.classes),
                config.eval_batch_size,
                config.seed,
            )
        # What the forward pass runs through: the models, or their DDP replicas.
        self.replicas = replicate(self.models, world, self.device, config.sync_bn)
        self.statistics = [
            buffer
            for model in self.models
            for module in model.modules()
            if isinstance(module, _BatchNorm)
            for buffer in (module.running_mean, module.running_var, module.num_batches_tracked)
            if buffer is not None
        ]
        self.teacher = load_teacher(config, dataset.classes, self.device)
        weight = None
        if config.balance == "weights":
            weight = class_weights(dataset.train.labels, len(dataset.classes))
        self.objective: Objective = build_objective(config, self.models, self.teacher, weight)
        self.optimizer = create_optimizer(self.models, config)
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=config.amp and self.device.type == "cuda"
        )
        self.update: UpdateStrategy = create_update(self.optimizer, self.scaler, self.models)
        # An exponential moving average of the kept model's weights (timm's ModelEmaV3): what is
        # evaluated, kept as best.pt and deployed, while the optimizer trains the model itself.
        # Its decay warms up (1 - (1 + t)^-2/3 after t updates, up to `ema`): a run of a few
        # hundred updates, as on 200 images, would otherwise keep mostly its random start
        # (ema=0.999: -7.9 test points on digits-200, benchmarks/results/plan_tricks.md).
        self.ema = ModelEmaV3(self.model, decay=config.ema, use_warmup=True) if config.ema else None
        self.batch_transform: BatchTransform = create_batch_transform(config, len(dataset.classes))
        self.budget = TimeBudget(budget_seconds) if budget_seconds is not None else None
        self.schedule: Schedule = create_schedule(config, self.budget)
        self.early_stopping = create_early_stopping(config)
        self.state = RunState()
        self.start: dict[str, Any] = {}  # where a divergence before the first checkpoint returns

    # one update ----------------------------------------------------------------------------
    def compute_loss(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        with mixed_precision(self.device, self.config.amp):
            return self.objective([model(images) for model in self.replicas], targets, images)

    def step(self, images: torch.Tensor, targets: torch.Tensor) -> float:
        """One optimizer update on a batch (two passes under SAM); returns the batch loss.

        `targets` are class indices, or class probabilities for a mixed batch. A non-finite loss
        leaves the weights and batch-norm statistics untouched and is returned as it is."""
        statistics = [buffer.clone() for buffer in self.statistics]
        loss = self.compute_loss(images, targets)
        if not self.world.all(bool(torch.isfinite(loss))):  # every process skips, or none
            self.optimizer.zero_grad(set_to_none=True)
            for buffer, saved in zip(self.statistics, statistics, strict=True):
                buffer.copy_(saved)
            return loss.item()
        self.update(loss, lambda: self.compute_loss(images, targets))
        self.state.updates += 1
        if self.ema is not None:
            self.ema.update(self.model, step=self.state.updates)
        return loss.item()

    @property
    def evaluated_model(self) -> Classifier:
        """The weights validation scores and best.pt keeps: the average under `ema`."""
        return self.ema.module if self.ema is not None else self.model

    # checkpoints ---------------------------------------------------------------------------
    @functools.cached_property
    def data_summary(self) -> dict[str, Any]:
        """Saved with each checkpoint and compared on resume; made once, when first saved."""
        return data_summary(self.dataset)

    def checkpoint(self) -> dict[str, Any]:
        return {
            "model": self.evaluated_model.state_dict(),
            "trained_model": self.model.state_dict() if self.ema is not None else None,
            "partners": [m.state_dict() for m in self.models[1:]],
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "schedule": self.schedule.state_dict(),
            "budget": self.budget.state_dict() if self.budget is not None else None,
            "early_stopping": (
                self.early_stopping.state_dict() if self.early_stopping is not None else None
            ),
            "rng": rng_states(),
            "config": runs.saved_config(self.config),
            "classes": self.dataset.classes,
            "data": self.data_summary,
            "state": vars(self.state),
        }

    def restore(self, checkpoint: dict[str, Any], with_budget: bool = True) -> None:
        """Continue from `checkpoint`; a rollback (`with_budget=False`) keeps the time spent."""
        self.evaluated_model.load_state_dict(checkpoint["model"])
        if self.ema is not None:
            self.model.load_state_dict(checkpoint["trained_model"])
        for model, state in zip(self.models[1:], checkpoint["partners"], strict=True):
            model.load_state_dict(state)
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        self.schedule.load_state_dict(checkpoint["schedule"])
        if with_budget and self.budget is not None and checkpoint.get("budget"):
            self.budget.load_state_dict(checkpoint["budget"])
        if self.early_stopping is not None and checkpoint.get("early_stopping"):
            self.early_stopping.load_state_dict(checkpoint["early_stopping"])
        restore_rng(checkpoint["rng"])
        self.state = RunState(**checkpoint["state"])

    # one epoch -----------------------------------------------------------------------------
    def train_one_epoch(self, epoch: int) -> float:
        for model in self.models:
            model.train()
            if self.config.freeze_bn:  # statistics stay; scale and shift still learn
                for module in model.modules():
                    if isinstance(module, _BatchNorm):
                        module.eval()
        generator = epoch_generator(self.config.seed, epoch)
        # dropout and drop-path masks of their own in each process
        torch.manual_seed(self.config.seed * 100_003 + epoch + 7_919 * self.world.rank)
        split, shard = self.dataset.train, self.world.shard
        total_loss, seen = 0.0, 0
        self._call("on_epoch_start", epoch, num_batches(len(split), self.config.batch_size, shard))
        nonfinite_in_a_row = 0
        side = self.training_side(epoch)
        batches = training_batches(split, self.config, generator, self.device, shard, side)
        for images, labels in batches:
            images, targets = self.batch_transform(images, labels, epoch)
            loss = self.step(images.contiguous(memory_format=self.memory_format), targets)
            if not math.isfinite(loss):
                nonfinite_in_a_row += 1
                if nonfinite_in_a_row >= MAX_NONFINITE_BATCHES:
                    raise Diverged(f"{nonfinite_in_a_row} non-finite losses in a row")
                continue
            nonfinite_in_a_row = 0
            total_loss += loss * len(labels)
            seen += len(labels)
            self._call("on_step_end", total_loss / seen)
        if not seen:
            raise Diverged("no finite loss in the epoch")
        return self.world.mean(total_loss / seen)  # the schedule's input agrees everywhere

    def training_side(self, epoch: int) -> int:
        """The epoch's image side under `progressive_resizing`; the run's progress is the share
        of its time budget spent (epochs vary in length with their side), else of max_epochs."""
        if self.budget is not None:
            progress = self.budget.spent / self.budget.seconds
        else:
            progress = epoch / self.config.max_epochs
        return progressive_side(self.config.input_size, self.config.progressive_resizing, progress)

    def logits(self, split: ImageSplit, rows: slice = slice(None)) -> torch.Tensor:
        return predict_logits(
            self.evaluated_model,
            split.images[rows],
            self.config.eval_batch_size,
            self.device,
            self.config.channels_last,
        )

    def evaluate(self, split: ImageSplit):
        """Metrics on the whole split; several processes each predict a block of it, with rank
        0's batch-norm statistics."""
        self.world.share_tensors(list(self.evaluated_model.buffers()))
        rows = self.world.shard.rows(len(split))
        logits = self.world.gather_rows(self.logits(split, rows), len(split))
        self.evaluated_logits = logits
        return compute_metrics(logits, split.labels, self.dataset.classes)

    # the loop ------------------------------------------------------------------------------
    def roll_back(self, epoch: int, reason: str) -> None:
        """Return to the last good checkpoint with the LR multiplied by `lr_factor`, or raise
        Diverged once `max_rollbacks` are spent."""
        previous = self.state
        if len(previous.rollbacks) >= self.config.max_rollbacks:
            tried = f" after {len(previous.rollbacks)} rollback(s)" if previous.rollbacks else ""
            raise Diverged(f"training diverged at epoch {epoch + 1} ({reason}){tried}")
        last = self.run_dir / "last.pt" if self.run_dir is not None else None
        saved = runs.load_checkpoint(last) if self.world.main and last and last.is_file() else None
        # Rank 0's checkpoint on every rank: on several machines only its folder holds last.pt.
        saved = self.world.share(saved)
        self.restore(saved if saved is not None else self.start, with_budget=False)
        self.state.lr_scale = previous.lr_scale * self.config.lr_factor
        self.state.rollbacks = [
            *previous.rollbacks,
            {
                "epoch": epoch + 1,
                "reason": reason,
                "resumed_from_epoch": self.state.epoch,
                "lr_scale": self.state.lr_scale,
            },
        ]
        self.state.resumes = previous.resumes
        console.print(
            f"epoch {epoch + 1}: {reason}; back to epoch {self.state.epoch} with the LR x "
            f"{self.state.lr_scale:g}",
            highlight=False,
        )

    def fit(self) -> RunState:
        """Train until the schedule stops or the budget is spent.

        Divergence rolls back (see `roll_back`); a run that keeps diverging raises Diverged."""
        config = self.config
        self.start = copy.deepcopy(self.checkpoint())
        self._call("on_fit_start")
        try:
            while not self.state.stopped and self.state.epoch < config.max_epochs:
                state = self.state
                epoch = state.epoch
                started = time.perf_counter()
                lr = scaled_lr(config, self.schedule.lr(epoch), self.world.size) * state.lr_scale
                set_lr(self.optimizer, lr)
                try:
                    train_loss = self.train_one_epoch(epoch)
                    evaluated = time.perf_counter()
                    val = self.evaluate(self.dataset.val)
                    val_seconds = time.perf_counter() - evaluated
                    self.phases.add("train", evaluated - started)
                    self.phases.add("validate", val_seconds)
                    if not math.isfinite(val.loss):
                        raise Diverged("non-finite validation outputs")
                except Diverged as why:
                    self.roll_back(epoch, str(why))
                    continue
                # rank 0's clock decides for every process
                seconds, val_seconds = self.world.share(
                    (time.perf_counter() - started, val_seconds)
                )
                self.expect_final_evaluation(val_seconds)
                state.history.append(
                    {
                        "epoch": epoch + 1,
                        "lr": lr,
                        "train_loss": train_loss,
                        "val_loss": val.loss,
                        "val_top1": val.top1,
                        "val_top5": val.top5,
                        "val_map": val.map,
                        "rollbacks": len(state.rollbacks),
                        "seconds": round(seconds, 3),
                    }
                )
                state.train_seconds += seconds
                if self.budget is not None:
                    self.budget.record(epoch, seconds)
                schedule_ends = self.schedule.step(epoch, train_loss, val.top1, val.loss)
                stops_early = self.early_stopping is not None and self.early_stopping.step(
                    val.loss, val.top1
                )
                out_of_time = self.budget is not None and not self.budget.another_epoch_fits()
                reasons = {
                    "max_epochs": epoch + 1 >= config.max_epochs,
                    "early_stopping": stops_early,
                    "time_budget": out_of_time,
                    "schedule": schedule_ends,
                }
                state.stopped_by = next((reason for reason, hit in reasons.items() if hit), "")
                state.stopped = bool(state.stopped_by)
                state.epoch = epoch + 1
                improved = kept_epoch(self.config.keep_epoch, val, state)
                if improved:
                    state.best_top1, state.best_loss = val.top1, val.loss
                    state.best_epoch = epoch + 1
                    self.best_val_logits = self.evaluated_logits
                written = time.perf_counter()
                self._call("on_epoch_end", epoch, val, improved)
                overhead = self.world.share(time.perf_counter() - written)  # after rank 0 wrote
                self.phases.add("checkpoints", overhead)
                if self.budget is not None:
                    self.budget.record_overhead(overhead)
        finally:
            self._call("on_fit_end")
        return self.state

    def _call(self, hook: str, *args: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)

    def expect_final_evaluation(self, val_seconds: float) -> None:
        """A budgeted schedule keeps time for evaluating the best checkpoint on val and test
        (and plotting): the slowest validation so far, scaled to those images. Timing 40
        validation images varies by half between epochs; scaled to a 10,000-image test set, the
        last one alone left 22 s for a final phase of 28 s (200 Fashion-MNIST images, 2m).
        Rank 0 evaluates alone what several processes shared, with every test-time view."""
        if self.budget is not None:
            test = len(self.dataset.test) if self.dataset.test is not None else 0
            scale = (len(self.dataset.val) + test) / max(1, len(self.dataset.val)) * self.world.size
            scale *= views_averaged(self.config)
            estimate = val_seconds * scale + FINAL_WRITE_SECONDS
            self.budget.final_seconds = max(self.budget.final_seconds, estimate)
