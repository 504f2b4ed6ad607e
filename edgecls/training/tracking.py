"""Experiment tracking beside the run folder: TensorBoard event files (`tensorboard=true`) and
MLflow runs (`mlflow=true` or `mlflow=URI`), each a callback around the trainer plus a `finish`
once the best checkpoint is evaluated (and exported). Both are optional extras
(`pip install "edgecls[tracking]"`).

MLflow's default store is `mlruns/` under the working directory: a SQLite database
(`mlruns/mlflow.db`, MLflow 3's local backend) with the artifacts in `mlruns/artifacts/`.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgecls.config import Config
from edgecls.errors import UserError
from edgecls.evaluate import Metrics
from edgecls.redact import redact
from edgecls.training.callbacks import Callback

if TYPE_CHECKING:
    from edgecls.training.loop import Trainer

EPOCH_SCALARS = ("train_loss", "val_loss", "lr", "val_top1", "val_top5", "val_map")
FINAL_SCALARS = ("val_top1", "val_top5", "val_map", "test_top1", "test_top5", "test_map")
MLFLOW_EXPERIMENT = "edgecls"
NOT_ARTIFACTS = ("last.pt",)  # best.pt is the model; last.pt only serves a resume


def _require(module: str, key: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise UserError(
            f"{key}=true needs {module}, which is not installed: "
            f'pip install "edgecls[tracking]" (or pip install {module})'
        )


def hyperparameters(config: Config) -> dict[str, Any]:
    """The config's plain values (numbers, strings, booleans), what trackers take as params;
    passwords redacted."""
    return {
        key: value
        for key, value in redact(config.to_dict()).items()
        if isinstance(value, (int, float, str, bool)) and key not in ("tensorboard", "mlflow")
    }


class Tracker(Callback):
    def finish(self, run_dir: Path, metrics: dict[str, Any]) -> None:
        """After the best checkpoint's evaluation and any export."""

    def close(self) -> None:
        """However the run ended."""


class TensorBoardTracker(Tracker):
    """Per-epoch scalars, then the validation confusion matrix as a figure and the
    hyperparameters with the final metrics, in `RUN/tensorboard/`."""

    def __init__(self, run_dir: Path, config: Config) -> None:
        _require("tensorboard", "tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.config = config
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def on_epoch_end(self, trainer: Trainer, epoch: int, val: Metrics, improved: bool) -> None:
        row = trainer.state.history[-1]
        for key in EPOCH_SCALARS:
            self.writer.add_scalar(key.replace("_", "/", 1), row[key], row["epoch"])
        self.writer.flush()

    def finish(self, run_dir: Path, metrics: dict[str, Any]) -> None:
        from edgecls.report.plots import confusion_figure

        figure = confusion_figure(metrics["val"]["confusion"], metrics["val"]["classes"])
        self.writer.add_figure("confusion/val", figure, metrics["epochs_trained"])
        final = {f"final/{k}": metrics[k] for k in FINAL_SCALARS if k in metrics}
        self.writer.add_hparams(hyperparameters(self.config), final, run_name="hparams")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def mlflow_uri(setting: bool | str) -> str:
    """`mlflow=true`: the local SQLite store under ./mlruns; otherwise the URI given."""
    if setting is True:
        root = Path("mlruns").resolve()
        root.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{root / 'mlflow.db'}"
    return str(setting)


class MLflowTracker(Tracker):
    """Params, per-epoch metrics, the final metrics, the run folder's files and the exported
    model, in one MLflow run of the `edgecls` experiment."""

    def __init__(self, run_dir: Path, config: Config) -> None:
        _require("mlflow", "mlflow")
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        import mlflow
        from mlflow.entities import Param

        for name in ("mlflow", "alembic"):
            logging.getLogger(name).setLevel(logging.WARNING)
        self.uri = mlflow_uri(config.mlflow)
        self.client = mlflow.MlflowClient(self.uri)
        try:
            experiment = self.client.get_experiment_by_name(MLFLOW_EXPERIMENT)
            if experiment is None:
                artifacts = None
                if config.mlflow is True:
                    artifacts = (Path("mlruns") / "artifacts").resolve().as_uri()
                experiment_id = self.client.create_experiment(MLFLOW_EXPERIMENT, artifacts)
            else:
                experiment_id = experiment.experiment_id
            self.run_id = self.client.create_run(experiment_id, run_name=run_dir.name).info.run_id
        except Exception as error:  # mlflow raises its own types for a store it cannot reach
            raise UserError(f"MLflow tracking at {redact(self.uri)} failed: {error}") from None
        params = [Param(key, str(value)) for key, value in hyperparameters(config).items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[start : start + 100])
        self.status = "FAILED"

    def on_epoch_end(self, trainer: Trainer, epoch: int, val: Metrics, improved: bool) -> None:
        row = trainer.state.history[-1]
        for key in EPOCH_SCALARS:
            self.client.log_metric(self.run_id, key, row[key], step=row["epoch"])

    def finish(self, run_dir: Path, metrics: dict[str, Any]) -> None:
        for key in FINAL_SCALARS:
            if key in metrics:
                self.client.log_metric(self.run_id, f"final_{key}", metrics[key])
        for path in sorted(run_dir.iterdir()):
            if path.name in NOT_ARTIFACTS or path.name.startswith("."):
                continue
            if path.is_dir():
                self.client.log_artifacts(self.run_id, str(path), path.name)
            else:
                self.client.log_artifact(self.run_id, str(path))
        self.status = "FINISHED"

    def close(self) -> None:
        self.client.set_terminated(self.run_id, self.status)


def check_trackers(config: Config) -> None:
    """Refuse a tracker whose package is missing before the run folder is written."""
    if config.tensorboard:
        _require("tensorboard", "tensorboard")
    if config.mlflow:
        _require("mlflow", "mlflow")


def create_trackers(config: Config, run_dir: Path) -> list[Tracker]:
    trackers: list[Tracker] = []
    if config.tensorboard:
        trackers.append(TensorBoardTracker(run_dir, config))
    if config.mlflow:
        trackers.append(MLflowTracker(run_dir, config))
    return trackers
