"""The plan step: choices from the data, the machine and the budget; the budget-aware schedule."""

import dataclasses
import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from PIL import Image

import edgecls.plan.choose as plan_module
from edgecls import runs
from edgecls.cli import main
from edgecls.config import build_config
from edgecls.data import Dataset, ImageSplit
from edgecls.errors import UserError
from edgecls.plan import (
    AMP_MIN_SPEEDUP,
    BUDGET_SCHEDULE,
    TINY_SMALL_DATA,
    UPSCALED,
    UPSCALED_MIN_EPOCHS,
    Candidate,
    affordable_ingredients,
    describe_machine,
    input_sizes,
    make_plan,
    profile_data,
)
from edgecls.plan.candidates import CIFAR_MODELS, candidates_for, cifar_input_size
from edgecls.plan.choose import (
    ENLARGED_CIFAR_MIN_EPOCHS,
    LIGHT_AUGMENT_EPOCHS,
    SCRATCH_LR,
    SMALL_DATA_MIXUP,
    resized_epochs_gain,
)
from edgecls.plan.measure import _mean_step_seconds as REAL_MEAN_STEP_SECONDS
from edgecls.plan.measure import _step_seconds as REAL_STEP_SECONDS  # before the fixture's
from edgecls.plan.measure import measure
from edgecls.plan.profile import DataProfile
from edgecls.training.loop import Trainer
from edgecls.training.schedules import BudgetLinearSchedule, ReduceLROnPlateauV2, TimeBudget

ONE_MODEL = {"model": "mobilenetv3_small_100"}  # one candidate model keeps planning fast
FP32 = {"amp": False}  # and so does timing one precision, where a test is not about it


@pytest.fixture(autouse=True)
def steady_machine(monkeypatch):
    """The plan's training-step times injected, not measured: 20 ms a step for every candidate
    however busy the machine is, so what the plan chooses does not depend on the machine's speed
    (the mixed-precision test injects its own). The wall time of a budgeted run is a benchmark:
    benchmarks/budget.py."""
    import edgecls.plan.measure as measured

    monkeypatch.setattr(measured, "_step_seconds", lambda train_step, mixed, least: 0.02)
    monkeypatch.setattr(measured, "_mean_step_seconds", lambda train_step, mixed, seconds: 0.02)


def make_folder(root, side, colour, per_class=6, classes=3):
    rng = np.random.default_rng(0)
    for c in range(classes):
        folder = root / f"class {c}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            shape = (side, side + 4, 3) if colour else (side, side + 4)
            Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def small_grey(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("grey"), side=20, colour=False)


@pytest.fixture(scope="module")
def large_colour(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("colour"), side=200, colour=True)


def test_the_data_profile_comes_from_the_files(small_grey, large_colour):
    grey = profile_data(str(small_grey))
    assert (grey.images, grey.classes, grey.median_side, grey.grayscale) == (18, 3, 20, True)
    assert (grey.training_images, grey.validation_images) == (14, 4)  # 20% split off
    assert 0 < grey.decode_seconds_per_image < 0.05  # timed on a sample of the files
    colour = profile_data(str(large_colour))
    assert colour.median_side == 200 and not colour.grayscale


def test_input_sizes_start_at_the_images_scale():
    assert input_sizes(20) == [32]
    assert input_sizes(100) == [128, 64, 32]
    assert input_sizes(1000) == [224, 128, 64]
    assert input_sizes(20, smallest=64) == [64]  # ImageNet features need 64 px or more


def test_small_grey_images_get_a_small_grey_input(small_grey):
    plan = make_plan(str(small_grey), {"time_budget": "10m"})
    assert plan.values["grayscale"] is True
    assert plan.values["pretrained"] is True  # 18 images: ImageNet weights beat scratch
    assert not {"label_smoothing", "progressive_resizing", "whiten_stem"} & set(plan.values)
    # ImageNet features want 64 px or more; 18 images in 10 minutes afford the upscaled 96
    assert plan.values["input_size"] == UPSCALED
    assert plan.values["linear_probe"] is True and "LP-FT" in plan.reasons["linear_probe"]
    assert plan.values["mixup"] == SMALL_DATA_MIXUP and "mixup" in plan.reasons["mixup"]
    imagenet = {c.input_size for c in plan.candidates if c.weights != "scratch"}
    assert imagenet == {UPSCALED, 64}
    scratch = [c.input_size for c in plan.candidates if c.weights == "scratch"]
    assert set(scratch) == {64, 32}  # from scratch: the images' own scale rounded up, and 64
    assert all(c.train_images_per_second > 0 and c.memory_bytes > 0 for c in plan.candidates)
    assert plan.values["schedule"] == BUDGET_SCHEDULE and plan.budget_seconds == 600
    assert plan.values["keep_epoch"] == "last"  # a handful of validation images


def test_the_chosen_candidate_is_timed_again_over_a_share_of_the_budget(small_grey, monkeypatch):
    """Its first sample is a few steps, a moment of a machine whose speed drifts; the epochs that
    fit, and the rules that count them, take a longer window's speed."""
    user = {**ONE_MODEL, **FP32, "pretrained": False, "time_budget": "10m"}
    steady = make_plan(str(small_grey), user)  # as fast over the window as in the first sample
    windows = []

    def timed_again(candidate, channels, classes, seconds):
        windows.append((candidate.model, seconds))
        candidate.train_images_per_second /= 2  # the machine was half as fast over the window

    monkeypatch.setattr(plan_module, "retime", timed_again)
    plan = make_plan(str(small_grey), user)
    chosen = plan.candidates[plan.chosen]
    assert windows == [(chosen.model, pytest.approx(plan_module.RETIME_SHARE * 600))]
    steady_epochs = steady.candidates[steady.chosen].epochs
    assert chosen.epochs < 0.6 * steady_epochs  # half the speed: about half the epochs
    windows.clear()  # a 2m budget's window would be no longer than the first sample
    make_plan(str(small_grey), {**user, "time_budget": "2m"})
    assert windows == []


def test_a_window_of_steps_is_timed_by_their_mean():
    def step(mixed):
        time.sleep(0.01)

    started = time.perf_counter()
    mean = REAL_MEAN_STEP_SECONDS(step, False, 0.2)
    assert time.perf_counter() - started >= 0.2
    assert 0.01 <= mean < 0.05
    assert REAL_MEAN_STEP_SECONDS(lambda mixed: time.sleep(0.3), False, 0.1) >= 0.3  # one at least


def test_a_short_budget_measures_candidates_best_first_within_its_planning_share(small_grey):
    plan = make_plan(str(small_grey), {"time_budget": "20s"}, started=time.monotonic())
    measured = [c for c in plan.candidates if c.measured]
    skipped = [c for c in plan.candidates if not c.measured]
    assert plan.candidates[plan.chosen] is measured[0]  # the most preferred kind and size
    assert skipped and all("not measured" in c.why_not and not c.fits for c in skipped)
    # it stops at the first candidate that fits once the share (2 s) is spent
    assert plan.seconds < 0.5 * 20, f"planning took {plan.seconds} s of a 20 s budget"


def test_an_upscaled_input_is_chosen_only_with_the_epochs_it_needs(tmp_path):
    folder = make_folder(tmp_path / "small", side=20, colour=False, per_class=150)
    plan = make_plan(str(folder), {"time_budget": "1m", "pretrained": True})
    by_size = {c.input_size: c for c in plan.candidates if c.model == plan.values["model"]}
    upscaled = by_size[UPSCALED]
    if upscaled.epochs >= UPSCALED_MIN_EPOCHS:
        assert plan.values["input_size"] == UPSCALED
    else:
        assert not upscaled.fits and f"it needs {UPSCALED_MIN_EPOCHS}" in upscaled.why_not
        assert plan.values["input_size"] == 64
        assert by_size[64].epochs > upscaled.epochs


def test_enough_tiny_images_get_a_cifar_resnet_at_their_own_scale(tmp_path):
    folder = make_folder(tmp_path / "tiny", side=20, colour=False, per_class=900)
    plan = make_plan(str(folder), {"time_budget": "10m", **FP32})
    assert plan.data.training_images >= TINY_SMALL_DATA
    assert (plan.values["model"], plan.values["input_size"]) == ("resnet20_cifar", 32)
    assert plan.values["pretrained"] is False and plan.values["grayscale"] is True
    assert plan.values["linear_probe"] is False  # nothing learnt to probe
    assert any("CIFAR ResNet" in note for note in plan.notes)
    assert any(c.weights != "scratch" for c in plan.candidates)  # measured, and passed over
    # from scratch: the speed runs' tricks that paid at equal wall time, each with its reason
    tricks = {"label_smoothing": 0.1, "progressive_resizing": 0.75, "whiten_stem": True}
    assert {key: plan.values[key] for key in tricks} == tricks
    assert all(plan.reasons[key] for key in tricks)
    assert plan.values["lr"] in (SCRATCH_LR, "tpe")
    assert "mixup" not in plan.values  # from scratch, on thousands of images


@pytest.mark.parametrize(
    ("side", "own"), [(8, 32), (20, 32), (24, 24), (27, 28), (28, 28), (31, 32), (32, 32)]
)
def test_a_cifar_resnet_is_measured_at_the_images_own_side_from_24_px_and_at_32(side, own):
    profile = DataProfile(9000, 10, side, True, 1.0, training_images=8000, validation_images=1000)
    cifar = [c for c in candidates_for(profile, {"pretrained": False}) if c.model in CIFAR_MODELS]
    assert [c.input_size for c in cifar] == sorted({32, own}, reverse=True)
    assert cifar_input_size(side) == own


@pytest.mark.parametrize(("speed", "planned"), [(2000.0, 32), (70.0, 28)])
def test_a_cifar_resnet_is_enlarged_to_32_px_only_with_the_epochs_it_needs(
    tmp_path, monkeypatch, speed, planned
):
    """28 px images at 32 px cost a third more a step; a short run spends it on epochs instead."""
    folder = make_folder(tmp_path / "tiny", side=28, colour=False, per_class=300)
    measured = plan_module.measure

    def at_speed(candidate, *args, **kwargs):  # the 32 px candidate at `speed`
        measured(candidate, *args, **kwargs)
        if candidate.model in CIFAR_MODELS and candidate.input_size == 32:
            candidate.train_images_per_second = speed

    monkeypatch.setattr(plan_module, "measure", at_speed)
    plan = make_plan(str(folder), {"model": "resnet20_cifar", "time_budget": "5m", **FP32})
    by_size = {c.input_size: c for c in plan.candidates}
    assert sorted(by_size) == [28, 32] and plan.values["input_size"] == planned
    enlarged = by_size[32]
    assert enlarged.fits == (enlarged.epochs >= ENLARGED_CIFAR_MIN_EPOCHS)
    if planned == 28:
        assert f"it needs {ENLARGED_CIFAR_MIN_EPOCHS}" in enlarged.why_not
    else:
        assert "enlarged" in plan.reasons["input_size"]


def test_a_users_cifar_resnet_is_planned_at_32_px(small_grey):
    plan = make_plan(str(small_grey), {"model": "resnet56_cifar", "time_budget": "10m"})
    assert [c.input_size for c in plan.candidates] == [32]
    assert plan.values["input_size"] == 32


def test_large_colour_images_get_a_larger_input(large_colour):
    plan = make_plan(str(large_colour), {**ONE_MODEL, "time_budget": "2h"})
    assert plan.values["input_size"] == 224 and plan.values["grayscale"] is False
    sizes = [c.input_size for c in plan.candidates]
    assert sizes == [224, 128, 64]
    memory = {c.input_size: c.memory_bytes for c in plan.candidates}
    assert memory[224] > memory[128] > memory[64]  # activations grow with the input
    if plan.machine["device"] == "cpu":  # a batch that stays in cache: 32 images of 224 px
        assert plan.values["eval_batch_size"] == 32


def test_explicit_options_win_and_are_named(small_grey):
    user = {**ONE_MODEL, "input_size": 48, "batch_size": 4, "time_budget": "10m"}
    plan = make_plan(str(small_grey), {**user, "linear_probe": False})
    assert not {"model", "input_size", "batch_size", "linear_probe"} & set(plan.values)
    assert {"model", "input_size", "batch_size", "time_budget", "linear_probe"} <= set(
        plan.user_keys
    )
    assert plan.reasons["input_size"] == "yours"
    assert [(c.model, c.input_size, c.batch_size) for c in plan.candidates] == [
        ("mobilenetv3_small_100", 48, 4)
    ]


def test_the_memory_estimate_keeps_out_what_does_not_fit(large_colour):
    user = {**ONE_MODEL, "time_budget": "2h", **FP32}
    need = {c.input_size: c.memory_bytes for c in make_plan(str(large_colour), user).candidates}
    # Free memory between what a 128 px and a 224 px batch need (70% of it may be used).
    machine = {**describe_machine(), "free_memory_bytes": (need[128] + need[224]) / 2 / 0.7}
    plan = make_plan(str(large_colour), user, machine)
    fits = {c.input_size: c.fits for c in plan.candidates}
    assert fits[128] and not fits[224] and "memory" in plan.candidates[0].why_not
    assert plan.values["input_size"] == 128
    assert 16 <= plan.values["eval_batch_size"] <= 256


def test_the_latency_limit_filters_candidates(small_grey):
    plan = make_plan(str(small_grey), {**ONE_MODEL, "time_budget": "10m", "max_latency_ms": 1e4})
    assert plan.candidates[0].latency_ms is not None and plan.candidates[0].latency_ms > 0
    result = CliRunner().invoke(
        main, ["train", str(small_grey), "--plan", *_args(ONE_MODEL), "max_latency_ms=0.0001"]
    )
    assert result.exit_code == 2 and "max_latency_ms" in result.stderr
    assert "Traceback" not in result.output


def _args(values):
    return [f"{k}={v}" for k, v in values.items()]


def test_a_budget_too_small_for_any_model_is_one_line_exit_2(small_grey, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["train", str(small_grey), "time_budget=1s", "amp=false"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "too small" in errors[0]
    assert not (tmp_path / "runs").exists()


def test_a_budget_spent_before_planning_is_refused_without_measuring(small_grey, monkeypatch):
    measured = []
    monkeypatch.setattr(plan_module, "measure", lambda *args: measured.append(args))
    long_ago = time.monotonic() - 120  # start-up took two minutes of a one-minute budget
    with pytest.raises(UserError, match="too small: start-up took 1[0-9]{2}"):
        make_plan(str(small_grey), {**ONE_MODEL, "time_budget": "1m"}, started=long_ago)
    assert not measured


def test_a_users_max_epochs_below_a_models_minimum_still_fits(small_grey, monkeypatch):
    monkeypatch.setitem(plan_module.MIN_EPOCHS, "scratch", 10**6)  # no budget would reach it
    monkeypatch.setattr(plan_module, "MIN_SHORT_EPOCHS", 10**6)
    user = {**ONE_MODEL, **FP32, "pretrained": False, "time_budget": "10m"}
    with pytest.raises(UserError, match="too small"):
        make_plan(str(small_grey), user)
    plan = make_plan(str(small_grey), {**user, "max_epochs": 1})
    assert plan.candidates[plan.chosen].fits and plan.reasons["max_epochs"] == "yours"


def test_plan_prints_and_exits_without_training(small_grey, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["train", str(small_grey), "--plan", *_args(ONE_MODEL)])
    assert result.exit_code == 0, result.output
    assert "edgecls plan" in result.stdout and "chosen" in result.stdout
    assert "time budget" in result.stdout  # the CPU default applies and says so
    assert re.search(r"keep_epoch +│ last  the last epoch", result.stdout)  # with its reason
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_a_planned_run_saves_its_plan_and_keeps_the_budget(small_grey, tmp_path):
    import edgecls

    trained = edgecls.train(
        str(small_grey), run_dir=tmp_path / "run", progress=False, time_budget="25s"
    )
    run = trained.run_dir
    plan = json.loads((run / "plan.json").read_text())
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert plan["budget_seconds"] == 25 and config["model"] == plan["values"]["model"]
    assert config["schedule"] == BUDGET_SCHEDULE
    assert (run / "best.pt").is_file() and (run / "metrics.json").is_file()
    metrics = json.loads((run / "metrics.json").read_text())
    ended = "time_budget" if metrics["epochs_trained"] < config["max_epochs"] else "max_epochs"
    assert metrics["stopped_by"] == ended
    assert ("stopped by", runs.STOP_REASONS[ended]) in trained.summary()  # not "early stopping"


# --- the budget-aware schedule, driven by a fake clock (the epoch times it is told) -------------


def drive(schedule, budget, epoch_seconds, losses=None):
    """Run epochs of the given durations as the trainer does: the budget records each epoch,
    the run stops when the schedule says so or another epoch would not fit."""
    lrs = []
    for epoch, seconds in enumerate(epoch_seconds):
        lrs.append(schedule.lr(epoch))
        budget.record(epoch, seconds)
        stop = schedule.step(epoch, losses[epoch] if losses else 1.0, 0.5)
        if stop or not budget.another_epoch_fits():
            return lrs, epoch + 1
    return lrs, None


def test_budget_schedule_decays_to_zero_when_the_budget_ends():
    budget = TimeBudget(100.0)
    schedule = BudgetLinearSchedule(base_lr=0.1, budget=budget, warmup_epochs=1)
    lrs, stopped_after = drive(schedule, budget, [10.0] * 50)
    assert stopped_after == 10  # ten 10-second epochs fill 100 s
    assert lrs[0] == pytest.approx(0.1)  # one warmup epoch reaches the base LR
    assert lrs[1:] == pytest.approx([0.1 * (10 - e) / 9 for e in range(1, 10)])
    assert all(a > b for a, b in zip(lrs[1:], lrs[2:], strict=False))


def test_budget_schedule_ends_its_decay_at_max_epochs_when_those_come_first():
    budget = TimeBudget(100.0)
    schedule = BudgetLinearSchedule(0.1, budget, warmup_epochs=0, max_epochs=4)
    lrs, stopped_after = drive(schedule, budget, [1.0] * 10)
    assert stopped_after == 4
    assert lrs[1:] == pytest.approx([0.1 * 3 / 4, 0.1 * 2 / 4, 0.1 * 1 / 4])


def test_budget_schedule_replans_when_epochs_get_slower():
    budget = TimeBudget(100.0)
    schedule = BudgetLinearSchedule(base_lr=0.1, budget=budget, warmup_epochs=0)
    lrs, stopped_after = drive(schedule, budget, [10.0, 10.0, 30.0, 30.0, 30.0, 30.0])
    assert stopped_after == 4  # 10 + 10 + 30 + 30 = 80 s; another 20 s epoch would not fit
    assert lrs[3] < lrs[2] < lrs[1]
    assert sum([10.0, 10.0, 30.0, 30.0]) <= 100.0


def test_budgeted_plateau_forces_its_decay_at_75_percent_of_the_time_and_stops_at_the_budget():
    budget = TimeBudget(100.0)
    schedule = ReduceLROnPlateauV2(base_lr=0.1, max_epochs=200, warmup_epochs=1, budget=budget)
    losses = [1 / (e + 1) for e in range(50)]  # always improving: no plateau reduction
    lrs, stopped_after = drive(schedule, budget, [5.0] * 50, losses)
    assert stopped_after == 20  # twenty 5-second epochs fill 100 s, far below max_epochs
    assert lrs[:15] == pytest.approx([0.1] * 15)
    assert lrs[15:] == pytest.approx([0.01] * 5)  # forced after epoch 15: 75 s of 100 s


def test_the_final_evaluation_counts_against_the_budget():
    budget = TimeBudget(100.0, final_seconds=30.0)
    schedule = BudgetLinearSchedule(base_lr=0.1, budget=budget, warmup_epochs=0)
    _, stopped_after = drive(schedule, budget, [10.0] * 50)
    assert stopped_after == 7  # 70 s of epochs, 30 s kept for evaluating best.pt on val and test


def test_a_rollback_keeps_the_time_it_spent_and_a_resume_restores_it():
    images = torch.randint(0, 256, (8, 1, 32, 32), dtype=torch.uint8)
    split = ImageSplit(images, torch.arange(8) % 2, [""] * 8)
    dataset = Dataset("tiny", ["a", "b"], split, split, None, [], [], False)
    config = build_config({**ONE_MODEL, "input_size": 32, "grayscale": True, "lr": 0.01})
    trainer = Trainer(config, dataset, budget_seconds=100.0)
    trainer.budget.record(0, 10.0)
    saved = trainer.checkpoint()
    trainer.budget.record(1, 10.0)
    trainer.restore(saved, with_budget=False)  # a rollback: the 20 s are gone all the same
    assert trainer.budget.spent == 20.0
    trainer.restore(saved)  # a resume: the budget as it was saved
    assert trainer.budget.spent == 10.0


# --- the paper's recipe within a budget -------------------------------------------------------


def test_the_costliest_ingredients_are_dropped_first_until_the_budget_fits():
    costs = {"sam": 2.0, "mutual": 1.9, "augmix": 1.3}
    wanted = ["sam", "mutual", "augmix"]
    assert affordable_ingredients(costs, wanted, 500, 60) == (wanted, [])  # 500 / 4.94 >= 60
    assert affordable_ingredients(costs, wanted, 200, 60) == (["mutual", "augmix"], ["sam"])
    assert affordable_ingredients(costs, wanted, 100, 60) == (["augmix"], ["sam", "mutual"])
    assert affordable_ingredients(costs, wanted, 50, 60) == ([], ["sam", "mutual", "augmix"])
    cheap_sam = {**costs, "sam": 1.1}  # measured, not assumed: the order follows the costs
    assert affordable_ingredients(cheap_sam, wanted, 100, 60) == (["sam", "augmix"], ["mutual"])


def test_a_generous_budget_keeps_the_full_recipe_and_a_tight_one_drops_it(
    small_grey, tmp_path, monkeypatch
):
    few = make_plan(str(small_grey), {**ONE_MODEL, "time_budget": "2h"})
    assert not few.values["sam"] and few.values["augment"] != "augmix"  # 14 training images
    assert any("too few for the paper's recipe" in note for note in few.notes)
    assert isinstance(few.values["lr"], float)  # 4 validation images cannot score a search
    assert "validation images" in few.reasons["lr"]
    enough = make_folder(tmp_path / "enough", side=20, colour=False, per_class=900)
    # generous even when a loaded machine measures the steps several times slower
    generous = make_plan(str(enough), {**ONE_MODEL, "time_budget": "12h"})
    assert generous.values["sam"] and generous.values["mutual"]
    assert generous.values["augment"] == "augmix" and generous.values["workers"] == 0
    assert generous.values["lr"] == "tpe"  # a search of ~10% of the budget fits
    trials, trial_epochs = generous.values["lr_search_trials"], generous.values["lr_search_epochs"]
    assert trials >= 5 and trial_epochs >= 2
    assert any("kept from the paper's recipe" in note for note in generous.notes)

    # 2,160 training images at 96 px: some 20 epochs in 40 s, far from the full recipe's 100, so
    # not even the cheapest ingredient fits: none is timed
    def not_to_be_timed(*args):
        raise AssertionError("ingredients timed although none can fit")

    monkeypatch.setattr(plan_module, "measure_ingredients", not_to_be_timed)
    user = {**ONE_MODEL, "input_size": 96, "time_budget": "40s"}
    tight = make_plan(str(enough), user, started=time.monotonic())
    assert 0 < tight.candidates[0].epochs < LIGHT_AUGMENT_EPOCHS
    assert not tight.values["sam"] and not tight.values["mutual"]
    assert tight.values["augment"] == "light" and isinstance(tight.values["lr"], float)
    dropped = next(note for note in tight.notes if note.startswith("dropped for the budget"))
    assert "SAM" in dropped and "mutual learning" in dropped and "AugMix" in dropped


@pytest.fixture
def mixed_precision_speedups(monkeypatch):
    """Step times injected, not measured: bf16 makes a dense CIFAR ResNet step 1.8x faster and a
    depthwise MobileNetV3 one 0.6x (what an AMX CPU gives: `python benchmarks/amp_speed.py`),
    however busy the machine is."""
    import edgecls.plan.measure as measured

    speedups = {"resnet20_cifar": 1.8, "mobilenetv3_small_100": 0.6}
    real_step = measured._training_step

    def tagged_step(candidate, *args):
        model, step = real_step(candidate, *args)
        step.model = candidate.model
        return model, step

    def step_seconds(step, mixed, least):
        return 0.01 / speedups[step.model] if mixed else 0.01

    monkeypatch.setattr(measured, "_training_step", tagged_step)
    monkeypatch.setattr(measured, "_step_seconds", step_seconds)
    monkeypatch.setattr(measured, "fast_mixed_precision", lambda device: True)


def test_mixed_precision_is_planned_only_where_it_trains_faster(tmp_path, mixed_precision_speedups):
    dense = Candidate("resnet20_cifar", 32, "scratch", 64)
    depthwise = Candidate("mobilenetv3_small_100", 32, "scratch", 64)
    for candidate in (dense, depthwise):
        measure(candidate, channels=1, classes=10)
    assert dense.amp and dense.amp_speedup >= AMP_MIN_SPEEDUP  # 1.8x on an AMX CPU
    assert not depthwise.amp and depthwise.amp_speedup < AMP_MIN_SPEEDUP  # 0.6x there

    folder = make_folder(tmp_path / "tiny", side=28, colour=False)
    plan = make_plan(str(folder), {"model": "resnet20_cifar", "time_budget": "10m"})
    assert plan.values["amp"] is True and "fp32" in plan.reasons["amp"]
    user = make_plan(str(folder), {"model": "resnet20_cifar", "time_budget": "10m", "amp": False})
    assert "amp" not in user.values and "amp" in user.user_keys
    assert user.candidates[0].amp_speedup is None and not user.candidates[0].amp


@pytest.mark.parametrize(
    ("step", "least", "timed"), [(0.05, 2, 8), (0.25, 2, 3), (0.4, 1, 2), (3.0, 2, 1)]
)
def test_steps_are_timed_until_enough_and_once_when_long(monkeypatch, step, least, timed):
    """Steps are timed until MEASURE_SECONDS (at least `least`, at most MEASURE_STEPS[1]); a
    step of LONG_STEP_SECONDS is timed once (a 224 px step takes seconds). Clock injected."""
    import edgecls.plan.measure as measured

    now, calls = [0.0], []
    monkeypatch.setattr(measured.time, "perf_counter", lambda: now[0])

    def train_step(mixed):
        calls.append(mixed)
        now[0] += step

    assert REAL_STEP_SECONDS(train_step, False, least) == pytest.approx(step)
    assert len(calls) == timed


def arrow_folder(root: Path, symmetric: bool, per_class: int = 24) -> Path:
    """Two classes of white shapes on black at random places: arrows pointing left or right
    (a mirror swaps the classes), or, `symmetric`, a bar and a cross (a mirror keeps them)."""
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (root / label).mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            image = np.zeros((32, 32), np.uint8)
            row, left = int(rng.integers(8, 24)), int(rng.integers(2, 12))
            image[row - 1 : row + 2, left : left + 18] = 255
            for step in range(6):
                if symmetric and label == "b":
                    image[row - 6 : row + 7, left + 8 : left + 11] = 255
                elif not symmetric:
                    column = left + step if label == "a" else left + 17 - step
                    image[row - 6 + step : row + 7 - step, column] = 255
            Image.fromarray(image).save(root / label / f"{index}.png")
    return root


def test_flips_are_planned_only_where_a_mirror_keeps_the_class(tmp_path):
    from edgecls.data.loader import labelled_sample
    from edgecls.evaluate.flips import probe_flips
    from edgecls.models import packaged_weights

    if packaged_weights("mobilenetv2_100") is None:
        pytest.skip("the probe's ImageNet weights are not installed")

    arrows = arrow_folder(tmp_path / "arrows", symmetric=False)
    shapes = arrow_folder(tmp_path / "shapes", symmetric=True)
    pointing = probe_flips(*labelled_sample(str(arrows), per_class=24, side=64))
    assert pointing.plain > 0.9 and pointing.mirrored < 0.5 and not pointing.keeps_class
    symmetric = probe_flips(*labelled_sample(str(shapes), per_class=24, side=64))
    assert symmetric.plain > 0.9 and symmetric.keeps_class
    plan = make_plan(str(arrows), {**ONE_MODEL, "time_budget": "10m"})
    assert plan.values["hflip"] is False and "a mirror changes the class" in plan.reasons["hflip"]
    assert plan.values["tta"] is False  # no mirror views at test time either
    symmetric_plan = make_plan(str(shapes), {**ONE_MODEL, "time_budget": "10m"})
    assert symmetric_plan.values["hflip"] is True and symmetric_plan.values["tta"] is True
    limited = make_plan(str(shapes), {**ONE_MODEL, "time_budget": "10m", "max_latency_ms": 1e4})
    assert limited.values["tta"] is False  # the latency limit was timed for one view
    assert limited.values["tta_shift"] == 0
    assert plan.values["tta_shift"] > 0 and "3x inference" in plan.reasons["tta_shift"]
    assert "6x inference" in symmetric_plan.reasons["tta_shift"]
    user = make_plan(str(arrows), {**ONE_MODEL, "time_budget": "10m", "hflip": True})
    assert "hflip" in user.user_keys and "hflip" not in user.values  # the user wins, unprobed


def test_a_short_run_trains_without_flips():
    from edgecls.plan.choose import FLIP_MIN_EPOCHS, _hflip

    situation = plan_module.Situation(
        user={}, profile=profile_data("digits"), machine={}, budget="1m", budget_seconds=60.0,
        budget_reserve=0.1, clock_started=0.0, planning_started=0.0, data="digits",
    )  # fmt: skip
    short = Candidate("resnet20_cifar", 32, "scratch", 64, epochs=FLIP_MIN_EPOCHS - 1)
    choice = _hflip(situation, short)
    assert choice.value is False and "a short run" in choice.reason


def test_shifted_test_views_are_planned_only_where_their_evaluation_fits_the_budget():
    from edgecls.plan.choose import FLIP_MIN_EPOCHS, _tta_shift

    situation = plan_module.Situation(
        user={}, profile=profile_data("digits"), machine={}, budget="1m", budget_seconds=60.0,
        budget_reserve=0.1, clock_started=0.0, planning_started=0.0, data="digits",
    )  # fmt: skip
    epochs = FLIP_MIN_EPOCHS - 1  # no mirror: three views
    fast = Candidate("resnet20_cifar", 32, "scratch", 64, 10_000.0, epochs=epochs)
    slow = Candidate("resnet20_cifar", 32, "scratch", 64, 20.0, epochs=epochs)
    on = _tta_shift(situation, fast)
    assert on.value > 0 and "1 px" in on.reason and "3x inference" in on.reason
    off = _tta_shift(situation, slow)  # 359 validation images, 6 s a view: 12 s > 6 s
    assert off.value == 0 and "over 10% of the budget" in off.reason
    unbudgeted = dataclasses.replace(situation, budget=None, budget_seconds=None)
    assert _tta_shift(unbudgeted, slow).value > 0


def test_a_budgeted_run_keeps_its_last_epoch_where_validation_is_too_small_or_the_run_long():
    from edgecls.plan.choose import KEEP_LAST_MAX_VAL_IMAGES, KEEP_LAST_MIN_EPOCHS, _keep_epoch

    situation = plan_module.Situation(
        user={}, profile=profile_data("digits"), machine={}, budget="1m", budget_seconds=60.0,
        budget_reserve=0.1, clock_started=0.0, planning_started=0.0, data="digits",
    )  # fmt: skip
    assert situation.profile.validation_images < KEEP_LAST_MAX_VAL_IMAGES
    short = KEEP_LAST_MIN_EPOCHS - 1
    small = _keep_epoch(situation, short)
    assert small.value == "last" and "too few to pick an epoch by" in small.reason
    large = dataclasses.replace(
        situation,
        profile=dataclasses.replace(situation.profile, validation_images=KEEP_LAST_MAX_VAL_IMAGES),
    )
    assert _keep_epoch(large, short).value == "best"
    long = _keep_epoch(large, KEEP_LAST_MIN_EPOCHS)
    assert long.value == "last" and f"about {KEEP_LAST_MIN_EPOCHS} epochs" in long.reason


def test_a_large_folder_keeps_validation_images_to_a_thousand_and_trains_on_the_rest(
    tmp_path, monkeypatch
):
    from edgecls.data import load_dataset
    from edgecls.plan.choose import VALIDATION_IMAGES, _smaller_validation, _val_fraction

    cifar = profile_data("cifar10")  # 50,000 training images: 10,000 at the default 0.2
    smaller = _smaller_validation(cifar, {})
    assert smaller.validation_images == VALIDATION_IMAGES
    assert smaller.training_images == 50_000 - VALIDATION_IMAGES
    assert _smaller_validation(cifar, {"val_fraction": 0.2}) is cifar  # the user's share wins
    assert _smaller_validation(profile_data("digits"), {}).validation_images == 359  # under it
    own = dataclasses.replace(cifar, val_fraction=None)  # DATA has a val/ folder: left as it is
    assert _smaller_validation(own, {}) is own
    situation = plan_module.Situation(
        user={}, profile=smaller, machine={}, budget=None, budget_seconds=None,
        budget_reserve=0.1, clock_started=0.0, planning_started=0.0, data="cifar10",
    )  # fmt: skip
    choice = _val_fraction(situation, Candidate("resnet20_cifar", 32, "scratch", 64))
    assert choice.value == smaller.val_fraction and "1000 validation images" in choice.reason

    # On a folder, the planned share splits off exactly the images the plan counted.
    monkeypatch.setattr(plan_module, "VALIDATION_IMAGES", 50)
    folder = tmp_path / "data"
    for index in range(600):  # 120 at the default share
        (folder / f"c{index % 5}").mkdir(parents=True, exist_ok=True)
        Image.new("L", (8, 8), index % 5 * 50).save(folder / f"c{index % 5}" / f"{index}.png")
    planned = _smaller_validation(profile_data(str(folder)), {})
    assert (planned.training_images, planned.validation_images) == (550, 50)
    dataset = load_dataset(
        str(folder), input_size=8, grayscale=True, val_fraction=planned.val_fraction,
        progress=False,
    )  # fmt: skip
    assert (len(dataset.train), len(dataset.val)) == (550, 50)


def test_random_erasing_is_planned_from_scratch_only_where_a_long_run_fits():
    from edgecls.plan.choose import RANDOM_ERASING_MIN_EPOCHS, _speed_run_tricks

    long = Candidate("resnet20_cifar", 32, "scratch", 64, epochs=RANDOM_ERASING_MIN_EPOCHS)
    short = Candidate("resnet20_cifar", 32, "scratch", 64, epochs=RANDOM_ERASING_MIN_EPOCHS - 1)
    pretrained = Candidate("mobilenetv2_100", 64, "imagenet: package", 64, epochs=500)
    choice = _speed_run_tricks(long)["random_erasing"]
    assert choice.value == 0.5 and "epochs fit" in choice.reason
    assert "random_erasing" not in _speed_run_tricks(short)
    assert _speed_run_tricks(pretrained) == {}


def test_epochs_from_scratch_count_progressive_resizings_cheaper_early_epochs():
    from edgecls.plan.choose import _with_resized_epochs

    # from 75% of the side to full by three quarters of the budget: a quarter more epochs
    assert 1.2 < resized_epochs_gain(32, 0.75) < 1.3
    assert resized_epochs_gain(32, 0.5) > resized_epochs_gain(32, 0.75)
    assert resized_epochs_gain(32, 0) == 1
    situation = plan_module.Situation(
        user={}, profile=profile_data("digits"), machine={}, budget="15m", budget_seconds=900.0,
        budget_reserve=0.1, clock_started=0.0, planning_started=0.0, data="digits",
    )  # fmt: skip
    scratch = Candidate("resnet20_cifar", 32, "scratch", 64, epochs=50)
    resized = _with_resized_epochs(situation, scratch)
    assert resized.epochs == int(50 * resized_epochs_gain(32, 0.75))
    switched_off = dataclasses.replace(situation, user={"progressive_resizing": 0})
    assert _with_resized_epochs(switched_off, scratch).epochs == 50
    pretrained = Candidate("mobilenetv2_100", 64, "imagenet: package", 64, epochs=50)
    assert _with_resized_epochs(situation, pretrained).epochs == 50  # trained at full size
