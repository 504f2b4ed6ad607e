"""Initial learning-rate estimation (paper 000, section 3.1).

- `range`: the fast.ai LR range test, run after one epoch of fine-tuning at a small fixed LR
  (the paper's fix for suggestions that are too high and wreck ImageNet initialisation).
- `tpe`: Optuna's TPE over a discrete range (step 0.001) with median pruning; each trial trains
  a freshly initialised model for a few epochs at a constant LR, without SAM or mutual learning,
  and scores its best validation top-1. The study lives in a storage (SQLite in the run folder by
  default), so an interrupted search continues where it stopped.
- `grid`: the same trials over a uniform grid of the range.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
import math
import os
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import psutil
from optuna.trial import TrialState

from edgecls.config import STORAGE_ENV, Config
from edgecls.console import console, progress_bars
from edgecls.data import Dataset
from edgecls.errors import UserError
from edgecls.evaluate import Metrics
from edgecls.redact import is_redacted, redact
from edgecls.report.plots import plot_lr_range_test
from edgecls.training.augment import training_batches
from edgecls.training.callbacks import Callback
from edgecls.training.loop import (
    Diverged,
    Trainer,
    epoch_generator,
    restore_rng,
    rng_states,
    set_lr,
)

# The paper's search ranges per model family; other families get a wide default.
LR_RANGES = {"mobilenetv3": (0.005, 0.03), "efficientnet": (0.001, 0.01)}
DEFAULT_LR_RANGE = (0.001, 0.05)


@dataclass
class LRSearchResult:
    method: str
    lr: float
    seconds: float
    trials: list[dict[str, Any]] = field(default_factory=list)
    curve: dict[str, list[float]] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class ReportToTrial(Callback):
    """Each epoch's validation top-1 goes to the Optuna trial, which may prune it."""

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial = trial

    def on_epoch_end(self, trainer: Trainer, epoch: int, val: Metrics, improved: bool) -> None:
        self.trial.report(val.top1, epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned()


def lr_range_for(config: Config) -> tuple[float, float]:
    if config.lr_search_range:
        low, high = config.lr_search_range
        return float(low), float(high)
    for family, bounds in LR_RANGES.items():
        if family in config.model:
            return bounds
    return DEFAULT_LR_RANGE


def trial_config(config: Config, lr: float) -> Config:
    """How a search trial trains: constant LR, no SAM, no mutual partner, a few epochs; a
    diverging trial is pruned, not rolled back."""
    return dataclasses.replace(
        config,
        lr=lr,
        sam=False,
        mutual=False,
        schedule="constant",
        warmup_epochs=0,
        max_epochs=config.lr_search_epochs,
        max_rollbacks=0,
    )


def lr_grid(config: Config) -> list[float]:
    """A uniform grid of `lr_search_trials` points over the range, snapped to the search step."""
    low, high = lr_range_for(config)
    step = config.lr_search_step
    points = np.linspace(low, high, config.lr_search_trials)
    return sorted({round(low + round((p - low) / step) * step, 10) for p in points})


def study_name(config: Config, dataset: Dataset, method: str) -> str:
    """Names the data, model and search settings, so a shared storage never mixes searches."""
    settings = {
        "data": [dataset.name, dataset.classes, len(dataset.train), len(dataset.val)],
        "model": [config.model, config.pretrained, config.weights, config.head, config.dropout],
        "input": [config.input_size, config.grayscale, config.augment, config.hflip],
        "search": [
            method,
            lr_range_for(config),
            config.lr_search_step,
            config.lr_search_trials,
            config.lr_search_epochs,
            config.batch_size,
            config.seed,
        ],
    }
    digest = hashlib.sha256(json.dumps(settings, default=str).encode()).hexdigest()[:12]
    data = Path(dataset.name).name or "data"
    return f"edgecls-lr-{method}-{data}-{config.model}-{digest}"


def storage_url(config: Config) -> str | None:
    """lr_search_storage, or the environment's when none is given: how workers and DDP ranks get
    it, and how a user keeps a password out of the shell history and `ps`."""
    return config.lr_search_storage or os.environ.get(STORAGE_ENV) or None


def _storage(config: Config, run_dir: Path | None) -> optuna.storages.BaseStorage | None:
    """The run folder's SQLite file by default, or the configured URL; RDB storages get a
    heartbeat so that a trial whose process died is failed, not left running."""
    url = storage_url(config)
    if url is None and run_dir is None:
        return None
    if url is None:
        run_dir.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{(run_dir / 'lr_search.db').resolve()}"
    if is_redacted(url):
        raise UserError(
            "the LR-search storage password is not saved with the run: pass "
            "lr_search_storage=URL again"
        )
    try:
        if url.startswith("journal:"):  # journal:PATH or journal:///PATH: processes of one machine
            path = Path(url.removeprefix("journal:").removeprefix("//")).expanduser()
            path.parent.mkdir(parents=True, exist_ok=True)
            backend = optuna.storages.journal.JournalFileBackend(str(path))
            return optuna.storages.JournalStorage(backend)
        if url.startswith(("sqlite:", "postgresql", "mysql")):
            return _rdb_storage(url)
        return optuna.storages.get_storage(url)
    except Exception as error:  # sqlalchemy and drivers raise their own types
        message = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise UserError(
            f"cannot open lr_search_storage {redact(url)}: {message or type(error).__name__}"
        ) from None


def _rdb_storage(url: str, attempts: int = 5) -> optuna.storages.RDBStorage:
    """An SQL storage with a heartbeat, so that a trial whose process died is failed. Workers
    started together on a new database race to create Optuna's tables: the losers retry."""
    import sqlalchemy.exc

    def open_storage() -> optuna.storages.RDBStorage:
        with warnings.catch_warnings():  # the heartbeat is "experimental" since Optuna 2.9
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, heartbeat_interval=10, grace_period=30)

    for attempt in range(attempts - 1):
        try:
            return open_storage()
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            time.sleep(0.5 * (attempt + 1))
    return open_storage()


def _fail_dead_trials(study: optuna.Study, storage_is_private: bool) -> None:
    """Trials left running by a killed process. In the run folder's own storage (locked by this
    run) every running trial is dead; a shared storage relies on the heartbeat."""
    if storage_is_private:
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            study.tell(trial.number, state=TrialState.FAIL)
        return
    with warnings.catch_warnings():  # "experimental" since Optuna 2.9
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    # Storages without a heartbeat (a journal file): the process of a trial that ran on this
    # machine is known; if it is gone, so is the trial.
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        attrs = trial.user_attrs
        if attrs.get("host") == socket.gethostname() and not _alive(attrs.get("pid")):
            study.tell(trial.number, state=TrialState.FAIL)


def _alive(pid: int | None) -> bool:
    try:
        return pid is not None and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def shared_storage(config: Config, out_dir: Path, workers: int) -> Config:
    """Several local workers and no lr_search_storage: a journal file in `out_dir` they share."""
    if workers <= 1 or storage_url(config) is not None:
        return config
    journal = (out_dir / "lr_search.journal").resolve()
    return dataclasses.replace(config, lr_search_storage=f"journal:{journal}")


@contextmanager
def run_workers(
    command: list[str], out_dir: Path, count: int, storage: str | None
) -> Iterator[None]:
    """`count` more processes of `edgecls COMMAND` beside this one, joining the same study at
    `storage` (passed in their environment, never on their command line: `ps` shows that);
    each writes into out_dir/worker-N (its log beside). One that fails fails the search."""
    started = []
    environment = {**os.environ, **({STORAGE_ENV: storage} if storage else {})}
    out_dir.mkdir(parents=True, exist_ok=True)
    for index in range(1, count + 1):
        folder = out_dir / f"worker-{index}"
        log = open(out_dir / f"worker-{index}.log", "wb")  # noqa: SIM115 (closed below)
        full = [sys.executable, "-m", "edgecls", *command, "--out", str(folder)]
        process = subprocess.Popen(
            [*full, "--worker-index", str(index)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=environment,
        )
        started.append((index, process, log))
    if started:
        console.print(f"LR search: {count} more worker(s), logs in {out_dir}", highlight=False)
    try:
        yield
    except BaseException:
        for _, process, _ in started:
            process.terminate()
        raise
    finally:
        for _, process, log in started:
            process.wait()
            log.close()
    for index, process, _ in started:
        if process.returncode != 0:
            raise UserError(
                f"LR-search worker {index} failed (exit {process.returncode}): "
                f"see {out_dir / f'worker-{index}.log'}"
            )


COUNTED = (TrialState.COMPLETE, TrialState.PRUNED)
LIVE = (*COUNTED, TrialState.RUNNING)
WAIT_SECONDS = 1.0  # between two looks at a shared study whose last trials run elsewhere


class SurplusTrial(Exception):
    """Workers sharing a study started more trials than it needs: this one stops unrun."""


def trial_search(
    config: Config,
    dataset: Dataset,
    method: str,
    run_dir: Path | None,
    progress: bool = True,
    worker: int = 0,
) -> LRSearchResult:
    """TPE (with median pruning) or grid search; finished trials in the storage are reused.

    Trials run one at a time with the sampler seeded by the number of trials already counted,
    so a search that was killed and resumed suggests what an uninterrupted one would have.
    Several workers (processes, machines) may share one study through `lr_search_storage`:
    together they run exactly `lr_search_trials` (or the grid), each trial checking, under
    the number the storage gave it, that it is not one too many, and all read the same best LR.
    """
    started = time.perf_counter()
    low, high = lr_range_for(config)
    study = _open_study(config, dataset, method, run_dir)
    grid = lr_grid(config) if method == "grid" else []
    planned = len(grid) if method == "grid" else config.lr_search_trials

    def objective(trial: optuna.Trial) -> float:
        return _run_trial(trial, study, config, dataset, grid, planned)

    if len(_counted(study)) < planned:
        console.print(
            f"LR search ({method}): {planned} trials of {config.lr_search_epochs} epochs "
            f"in [{low}, {high}]" + (f", worker {worker}" if worker else ""),
            highlight=False,
        )
    _run_until_counted(study, objective, planned, config, progress, worker)
    trials = [
        {
            "number": t.number,
            "lr": t.params.get("lr"),
            "state": t.state.name.lower(),
            "top1": max(t.intermediate_values.values(), default=t.value),
            "epochs": len(t.intermediate_values),
        }
        for t in study.trials
        if t.state != TrialState.FAIL or t.params
    ]
    completed = [t for t in _counted(study) if t.state == TrialState.COMPLETE]
    if not completed:
        raise UserError(
            f"every LR-search trial in [{low}, {high}] diverged or was pruned; "
            "give a number with lr=..., or a lower lr_search_range"
        )
    best_trial = max(completed, key=lambda t: (t.value, -t.number))
    return LRSearchResult(
        method, float(best_trial.params["lr"]), time.perf_counter() - started, trials
    )


def _open_study(
    config: Config, dataset: Dataset, method: str, run_dir: Path | None
) -> optuna.Study:
    """The search's study in its storage (new, or as an earlier run or other workers left it),
    with the trials of dead processes failed."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=study_name(config, dataset, method),
        storage=_storage(config, run_dir),
        load_if_exists=True,
        direction="maximize",
        pruner=(
            optuna.pruners.NopPruner()
            if method == "grid"
            else optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
        ),
    )
    _fail_dead_trials(study, storage_is_private=storage_url(config) is None)
    return study


def _counted(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=COUNTED)


def _run_trial(
    trial: optuna.Trial,
    study: optuna.Study,
    config: Config,
    dataset: Dataset,
    grid: list[float],
    planned: int,
) -> float:
    """One trial (a grid point, or TPE's suggestion) trained briefly: its best validation
    top-1. One past the `planned` number of live trials stops unrun."""
    live = study.get_trials(deepcopy=False, states=LIVE)
    ahead = [t for t in live if t.number < trial.number]
    if len(ahead) >= planned:
        raise SurplusTrial
    trial.set_user_attr("host", socket.gethostname())
    trial.set_user_attr("pid", os.getpid())
    if grid:
        lr = trial.suggest_float("lr", *[_free_grid_point(study, grid, ahead)] * 2)
    else:
        low, high = lr_range_for(config)
        lr = trial.suggest_float("lr", low, high, step=config.lr_search_step)
    trainer = Trainer(trial_config(config, lr), dataset, callbacks=[ReportToTrial(trial)])
    try:
        state = trainer.fit()
    except Diverged as why:
        raise optuna.TrialPruned(str(why)) from None
    return state.best_top1


def _run_until_counted(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float],
    planned: int,
    config: Config,
    progress: bool,
    worker: int,
) -> None:
    """Run trials until `planned` are complete or pruned, here or in other workers, with a
    progress bar and the best top-1 so far."""
    shared = storage_url(config) is not None
    with progress_bars(progress) as bars:
        task = bars.add_task("LR search", total=planned, completed=len(_counted(study)), status="")
        while len(done := _counted(study)) < planned:
            if len(study.get_trials(deepcopy=False, states=LIVE)) >= planned:
                time.sleep(WAIT_SECONDS)  # the last trials run in other workers
                _fail_dead_trials(study, storage_is_private=False)
            else:
                study.sampler = optuna.samplers.TPESampler(
                    seed=config.seed + len(done) + 1000 * worker, constant_liar=shared
                )
                study.optimize(objective, n_trials=1, catch=(SurplusTrial,))
            best = max((t.value for t in _counted(study) if t.value is not None), default=None)
            status = "" if best is None else f"best top-1 {best:.1%}"
            bars.update(task, completed=len(_counted(study)), status=status)


def _free_grid_point(study: optuna.Study, grid: list[float], ahead: list) -> float:
    """The first grid LR that no live trial before this one has taken (a trial that died gives
    its point back). A trial just started elsewhere names its LR within moments: wait for it."""
    numbers = {t.number for t in ahead}
    while True:
        live = [t for t in study.get_trials(deepcopy=False, states=LIVE) if t.number in numbers]
        if all("lr" in t.params for t in live):
            taken = {t.params["lr"] for t in live}
            free = next((lr for lr in grid if lr not in taken), None)
            if free is None:
                raise SurplusTrial
            return free
        time.sleep(0.05)


def _snapshot(trainer: Trainer) -> dict[str, Any]:
    return {
        "models": [copy.deepcopy(m.state_dict()) for m in trainer.models],
        "optimizer": copy.deepcopy(trainer.optimizer.state_dict()),
        "rng": rng_states(),
    }


def _restore(trainer: Trainer, snapshot: dict[str, Any]) -> None:
    for model, state in zip(trainer.models, snapshot["models"], strict=True):
        model.load_state_dict(state)
    trainer.optimizer.load_state_dict(snapshot["optimizer"])
    restore_rng(snapshot["rng"])


def lr_range_test(
    trainer: Trainer,
    *,
    finetune_lr: float,
    start_lr: float = 1e-5,
    end_lr: float = 10.0,
    iterations: int = 100,
    smoothing: float = 0.98,
    diverge_factor: float = 4.0,
) -> tuple[float, dict[str, list[float]]]:
    """Suggested LR (a tenth of the loss's minimum) and the (lr, loss) curve.

    One epoch at `finetune_lr` first; then the LR grows exponentially from `start_lr` to `end_lr`
    over `iterations` batches, stopping early once the smoothed loss exceeds `diverge_factor`
    times its minimum. The trainer's models, optimizer and RNG states are restored afterwards.
    """
    snapshot = _snapshot(trainer)
    config, split = trainer.config, trainer.dataset.train
    for model in trainer.models:
        model.train()
    set_lr(trainer.optimizer, finetune_lr)
    generator = epoch_generator(config.seed, -1)
    for images, labels in training_batches(split, config, generator, trainer.device):
        trainer.step(images.contiguous(memory_format=trainer.memory_format), labels)

    def endless_batches():
        for epoch in itertools.count():
            generator = epoch_generator(config.seed, -2 - epoch)
            yield from training_batches(split, config, generator, trainer.device)

    lrs, losses = [], []
    average, best = 0.0, math.inf
    ratio = (end_lr / start_lr) ** (1 / max(1, iterations - 1))
    for step, (images, labels) in zip(range(iterations), endless_batches(), strict=False):
        lr = start_lr * ratio**step
        set_lr(trainer.optimizer, lr)
        loss = trainer.step(images.contiguous(memory_format=trainer.memory_format), labels)
        average = smoothing * average + (1 - smoothing) * loss
        smoothed = average / (1 - smoothing ** (step + 1))
        if not math.isfinite(smoothed) or smoothed > diverge_factor * best:
            break
        best = min(best, smoothed)
        lrs.append(lr)
        losses.append(smoothed)
    _restore(trainer, snapshot)
    return suggested_lr(lrs, losses), {"lr": lrs, "loss": losses}


def suggested_lr(lrs: list[float], losses: list[float]) -> float:
    """A tenth of the LR at the smoothed loss's minimum (Smith's reading of the range test).

    Against a grid of short real runs (benchmarks/lr_rule.py) it landed next to the best LR on
    MNIST and Fashion-MNIST from scratch and on digits fine-tuned, where the middle of the longest
    falling stretch, counted from its first point, picked 10-100x too low (0.0032 on Fashion-MNIST,
    whose best short run had 0.1).
    """
    if not lrs:
        return 1e-3
    lowest = int(np.argmin(losses))
    return float(max(lrs[0], lrs[lowest] / 10))


def range_search(config: Config, dataset: Dataset, run_dir: Path | None) -> LRSearchResult:
    started = time.perf_counter()
    low, _ = lr_range_for(config)
    trainer = Trainer(trial_config(config, low), dataset)
    console.print("LR range test: 1 epoch of fine-tuning, then an exponential sweep")
    lr, curve = lr_range_test(trainer, finetune_lr=low)
    if run_dir is not None:
        plot_lr_range_test(curve["lr"], curve["loss"], lr, run_dir / "lr_range_test.png")
    return LRSearchResult("range", lr, time.perf_counter() - started, curve=curve)


def search_lr(
    config: Config,
    dataset: Dataset,
    run_dir: Path | None,
    progress: bool = True,
    worker: int = 0,
) -> LRSearchResult:
    """Estimate the initial LR with `config.lr` as the method (auto means tpe); `worker` numbers
    the processes sharing one study (0: the one that reports)."""
    method = "tpe" if config.lr == "auto" else str(config.lr)
    if method == "range":
        return range_search(config, dataset, run_dir)
    return trial_search(config, dataset, method, run_dir, progress, worker)
