"""Hooks around the training loop (in the manner of Ultralytics' callbacks): what happens beside
training lives in callbacks, not in `Trainer`: checkpoints and progress bars here, experiment
tracking in `tracking.py`, LR-search trial pruning in `lr_search.py`.

A callback overrides the hooks it needs; each gets the trainer, whose `state`, `budget` and
`models` it may read. A hook may raise to stop the run (a pruned LR-search trial does).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgecls import runs
from edgecls.console import progress_bars
from edgecls.evaluate import Metrics

if TYPE_CHECKING:
    from edgecls.training.loop import Trainer


class Callback:
    def on_fit_start(self, trainer: Trainer) -> None:
        pass

    def on_epoch_start(self, trainer: Trainer, epoch: int, batches: int) -> None:
        pass

    def on_step_end(self, trainer: Trainer, mean_loss: float) -> None:
        pass

    def on_epoch_end(self, trainer: Trainer, epoch: int, val: Metrics, improved: bool) -> None:
        pass

    def on_fit_end(self, trainer: Trainer) -> None:
        """Called however `fit` ends, a raised exception included."""


class CheckpointWriter(Callback):
    """best.pt when validation top-1 improves (or ties at a lower loss); last.pt and
    history.csv after every epoch."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir

    def on_epoch_end(self, trainer: Trainer, epoch: int, val: Metrics, improved: bool) -> None:
        if improved:
            runs.save_checkpoint(trainer.checkpoint(), self.run_dir / "best.pt")
        runs.save_checkpoint(trainer.checkpoint(), self.run_dir / "last.pt")
        runs.write_history(self.run_dir, trainer.state.history)


class ProgressBars(Callback):
    """Epochs (those that fit, in a budgeted run), batches and the time budget as rich bars."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.context: Any = None

    def on_fit_start(self, trainer: Trainer) -> None:
        self.context = progress_bars(self.enabled)
        self.bars = self.context.__enter__()
        self.epochs = self.bars.add_task(
            "epochs", total=trainer.config.max_epochs, completed=trainer.state.epoch, status=""
        )
        self.batches = self.bars.add_task("batches", total=1, status="")
        self.budget = None
        if trainer.budget is not None:
            total = round(trainer.budget.seconds)
            self.budget = self.bars.add_task("time budget", total=total, status="s")

    def on_epoch_start(self, trainer: Trainer, epoch: int, batches: int) -> None:
        self.bars.reset(self.batches, total=batches, status="")

    def on_step_end(self, trainer: Trainer, mean_loss: float) -> None:
        self.bars.update(self.batches, advance=1, status=f"loss {mean_loss:.4f}")

    def on_epoch_end(self, trainer: Trainer, epoch: int, val: Metrics, improved: bool) -> None:
        state, row = trainer.state, trainer.state.history[-1]
        self.bars.update(
            self.epochs,
            completed=state.epoch,
            status=f"loss {row['train_loss']:.4f}  lr {row['lr']:.2e}  top-1 {val.top1:.1%} "
            + (
                "(keeping the last epoch)"
                if trainer.config.keep_epoch == "last"
                else f"(best {state.best_top1:.1%} @ {state.best_epoch})"
            ),
        )
        budget = trainer.budget
        if budget is not None:
            left = budget.time_left
            self.bars.update(
                self.budget,
                completed=round(budget.spent),
                status=f"s  {int(left // 60)}:{int(left % 60):02d} left",
            )
            fitting = budget.fitting_epochs()
            if fitting is not None:
                self.bars.update(self.epochs, total=min(trainer.config.max_epochs, fitting))

    def on_fit_end(self, trainer: Trainer) -> None:
        if self.context is not None:
            self.context.__exit__(None, None, None)
            self.context = None
