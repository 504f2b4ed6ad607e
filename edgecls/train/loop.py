"""The training loop (paper 000, Algorithm 1 in spirit).

    data, model, optimizer, schedule  <- config
    for each epoch until the schedule says stop:
        set the epoch's LR (warmup, plateau reductions)
        train one epoch              (the `step` hook does forward/backward/update)
        evaluate on validation       (top-1 picks the best checkpoint)
        save last.pt; history.csv
    evaluate the best checkpoint; write metrics.json and plots

Every epoch draws its randomness from a generator seeded by (seed, epoch), and the checkpoint
holds the optimizer, schedule and RNG states, so a resumed run repeats an uninterrupted one.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import timm.optim
import torch
import torch.nn.functional as F
from torch import nn

from edgecls import runs
from edgecls.config import Config
from edgecls.data import Dataset, ImageSplit, load_dataset, to_float
from edgecls.errors import UserError
from edgecls.evaluate import compute_metrics
from edgecls.evaluate.inference import predict_logits, select_device
from edgecls.models import create_model
from edgecls.report import plot_confusion_matrix, plot_history
from edgecls.report.progress import console, progress_bars
from edgecls.train.augment import create_augmentation
from edgecls.train.schedules import Schedule, create_schedule

StepFn = Callable[[torch.Tensor, torch.Tensor], float]


@dataclass
class RunState:
    """What the loop carries from epoch to epoch (and through a resume)."""

    epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    best_top1: float = -1.0
    best_epoch: int = 0
    train_seconds: float = 0.0
    stopped: bool = False


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """Shuffling and augmentation randomness that depends only on (seed, epoch)."""
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


def create_optimizer(model: nn.Module, config: Config) -> torch.optim.Optimizer:
    return timm.optim.create_optimizer_v2(
        model,
        opt="momentum",
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        filter_bias_and_bn=False,
    )


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Every parameter group follows the schedule in proportion to its own `lr_scale`."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def supervised_step(model: nn.Module, optimizer: torch.optim.Optimizer) -> StepFn:
    """One plain SGD update on a batch; returns the batch loss."""

    def step(images: torch.Tensor, labels: torch.Tensor) -> float:
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


def batches(split: ImageSplit, batch_size: int, generator: torch.Generator):
    """Shuffled index batches; the last short batch is dropped (batch norm needs > 1 sample)."""
    order = torch.randperm(len(split.labels), generator=generator)
    usable = len(order) if len(order) <= batch_size else len(order) - len(order) % batch_size
    for start in range(0, usable, batch_size):
        yield order[start : start + batch_size]


def _rng_states() -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }


def _restore_rng(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])


class Trainer:
    def __init__(self, config: Config, run_dir: Path, dataset: Dataset, progress: bool = True):
        self.config = config
        self.run_dir = run_dir
        self.dataset = dataset
        self.progress = progress
        self.device = select_device(config.device)
        self.memory_format = torch.channels_last if config.channels_last else torch.preserve_format
        seed_everything(config.seed)
        self.model = create_model(config, len(dataset.classes)).to(
            self.device, memory_format=self.memory_format
        )
        self.optimizer = create_optimizer(self.model, config)
        self.schedule: Schedule = create_schedule(config)
        self.augment = create_augmentation(config)
        self.step = supervised_step(self.model, self.optimizer)
        self.state = RunState()

    # checkpoints ---------------------------------------------------------------------------
    def checkpoint(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "rng": _rng_states(),
            "config": self.config.to_dict(),
            "classes": self.dataset.classes,
            "state": vars(self.state),
        }

    def restore(self, checkpoint: dict[str, Any]) -> None:
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.schedule.load_state_dict(checkpoint["schedule"])
        _restore_rng(checkpoint["rng"])
        self.state = RunState(**checkpoint["state"])

    # one epoch -----------------------------------------------------------------------------
    def train_one_epoch(self, epoch: int, bars, task) -> float:
        self.model.train()
        generator = epoch_generator(self.config.seed, epoch)
        torch.manual_seed(self.config.seed * 100_003 + epoch)
        split = self.dataset.train
        total_loss, seen = 0.0, 0
        num_batches = max(1, len(split.labels) // self.config.batch_size)
        bars.reset(task, total=num_batches, status="")
        for index in batches(split, self.config.batch_size, generator):
            images = to_float(split.images[index]).to(self.device)
            images = self.augment(images, generator).contiguous(memory_format=self.memory_format)
            loss = self.step(images, split.labels[index].to(self.device))
            if not np.isfinite(loss):
                raise UserError(
                    f"training diverged at epoch {epoch + 1} (loss {loss}); try a lower lr"
                )
            total_loss += loss * len(index)
            seen += len(index)
            bars.update(task, advance=1, status=f"loss {total_loss / seen:.4f}")
        return total_loss / max(1, seen)

    def evaluate(self, split: ImageSplit):
        logits = predict_logits(
            self.model,
            split.images,
            self.config.eval_batch_size,
            self.device,
            self.config.channels_last,
        )
        return compute_metrics(logits, split.labels, self.dataset.classes)

    # the loop ------------------------------------------------------------------------------
    def fit(self) -> RunState:
        config, state = self.config, self.state
        with progress_bars(self.progress) as bars:
            epochs_task = bars.add_task("epochs", total=config.max_epochs, status="")
            batch_task = bars.add_task("batches", total=1, status="")
            bars.update(epochs_task, completed=state.epoch)
            while not state.stopped and state.epoch < config.max_epochs:
                epoch = state.epoch
                started = time.perf_counter()
                lr = self.schedule.lr(epoch)
                set_lr(self.optimizer, lr)
                train_loss = self.train_one_epoch(epoch, bars, batch_task)
                val = self.evaluate(self.dataset.val)
                seconds = time.perf_counter() - started
                state.history.append(
                    {
                        "epoch": epoch + 1,
                        "lr": lr,
                        "train_loss": train_loss,
                        "val_loss": val.loss,
                        "val_top1": val.top1,
                        "val_top5": val.top5,
                        "val_map": val.map,
                        "seconds": round(seconds, 3),
                    }
                )
                state.train_seconds += seconds
                state.stopped = self.schedule.step(epoch, train_loss, val.top1)
                state.epoch = epoch + 1
                if val.top1 > state.best_top1:
                    state.best_top1, state.best_epoch = val.top1, epoch + 1
                    runs.save_checkpoint(self.checkpoint(), self.run_dir / "best.pt")
                runs.save_checkpoint(self.checkpoint(), self.run_dir / "last.pt")
                runs.write_history(self.run_dir, state.history)
                bars.update(
                    epochs_task,
                    completed=state.epoch,
                    status=f"loss {train_loss:.4f}  lr {lr:.2e}  top-1 {val.top1:.1%} "
                    f"(best {state.best_top1:.1%} @ {state.best_epoch})",
                )
        return state

    def finish(self) -> dict[str, Any]:
        """Evaluate the best checkpoint; write metrics.json and the plots."""
        best = runs.load_checkpoint(self.run_dir / "best.pt")
        self.model.load_state_dict(best["model"])
        val = self.evaluate(self.dataset.val)
        state = self.state
        metrics: dict[str, Any] = {
            "val_top1": val.top1,
            "val_top5": val.top5,
            "val_map": val.map,
            "val_loss": val.loss,
            "best_epoch": state.best_epoch,
            "epochs_trained": state.epoch,
            "stopped_early": state.epoch < self.config.max_epochs,
            "train_seconds": round(state.train_seconds, 2),
            "num_classes": len(self.dataset.classes),
            "num_train": len(self.dataset.train.labels),
            "num_val": len(self.dataset.val.labels),
            "skipped_files": len(self.dataset.skipped),
            "val": val.to_dict(),
        }
        plot_confusion_matrix(
            val.confusion, self.dataset.classes, self.run_dir / "confusion_val.png"
        )
        if self.dataset.test is not None and len(self.dataset.test.labels):
            test = self.evaluate(self.dataset.test)
            metrics.update(test_top1=test.top1, test_top5=test.top5, test_map=test.map)
            metrics["test"] = test.to_dict()
            plot_confusion_matrix(
                test.confusion, self.dataset.classes, self.run_dir / "confusion_test.png"
            )
        runs.write_json(self.run_dir / "metrics.json", metrics)
        plot_history(state.history, self.run_dir)
        return metrics


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
) -> dict[str, Any]:
    """Train as configured into `run_dir`; return the final metrics (also in metrics.json)."""
    if config.data is None:
        raise UserError("no dataset given")
    dataset = load_dataset(
        config.data,
        input_size=config.input_size,
        grayscale=config.grayscale,
        val_fraction=config.val_fraction,
        seed=config.seed,
        data_root=config.data_root,
        download=config.download,
        progress=progress,
    )
    trainer = Trainer(config, run_dir, dataset, progress)
    if resume:
        trainer.restore(runs.load_checkpoint(run_dir / "last.pt"))
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        runs.write_config(run_dir, config)
    console.print(f"run folder: {run_dir}", highlight=False)
    write_skipped(run_dir, dataset)
    trainer.fit()
    return trainer.finish()
