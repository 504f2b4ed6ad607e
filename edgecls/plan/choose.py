"""Step 4 of planning: choose. The candidates are measured best first and judged (memory, latency,
budget); the most preferred one that fits is chosen; then each setting comes from a small rule
that returns its value and the reason the plan table prints, and `make_plan` applies the rules in
order. Every value the user gave wins; the plan says which choices were the user's.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from edgecls.config import Config, build_config, parse_duration
from edgecls.data.cache import choose_cache, decoded_bytes
from edgecls.data.loader import labelled_sample
from edgecls.errors import UserError
from edgecls.evaluate.flips import (
    MIRROR_KEEPS_CLASS,
    PROBE_PER_CLASS,
    PROBE_SIDE,
    FlipProbe,
    probe_flips,
)
from edgecls.models import create_model, on_meta_device, shift_pixels
from edgecls.plan.candidates import (
    TINY_SIDE,
    Candidate,
    candidates_for,
    cifar_input_size,
    is_cifar_resnet,
)
from edgecls.plan.measure import (
    AMP_MIN_SPEEDUP,
    MEASURE_SECONDS,
    describe_machine,
    give_back_freed_memory,
    measure,
    measure_ingredients,
    measure_latency,
    retime,
)
from edgecls.plan.profile import VAL_FRACTION, DataProfile, profile_data
from edgecls.training.augment import progressive_side

DEFAULT_CPU_BUDGET = "10m"  # a CPU run with no time_budget stays interactive
DECODE_RESERVE = 1.25  # on the decoding time of every image, timed on a sample of them
# Epochs a candidate must reach within the budget to be worth training: with fewer, the CIFAR
# ResNet on Fashion-MNIST did no better than MobileNetV3-small at 64 px in the same time; with a
# few more it did better.
MIN_EPOCHS = {"imagenet": 10, "scratch": 15, "cifar": 12}
MIN_SHORT_EPOCHS = 3  # when nothing reaches its minimum, the most epochs, if at least this many
# Epochs the paper's full recipe (SAM, mutual learning, AugMix) must still reach within the
# budget, at its measured cost; below that its costliest ingredients are dropped first. Kept
# with only 41 epochs, SAM and AugMix cost 15 points on 200 Fashion-MNIST images in 2 minutes
# (benchmarks/auto_plan.py --schedules at the commit before this rule).
FULL_RECIPE_EPOCHS = {"imagenet": 100, "scratch": 150}
# Nor on fewer training images than this, no bias decay included: with 160 images in 2 minutes,
# AugMix scored below `basic` augmentation on Fashion-MNIST, and no bias decay below its absence
# on digits.
FULL_RECIPE_MIN_IMAGES = 1_000
# Pretrained weights on fewer training images than this start from a linear probe (LP-FT): on the
# 160-image subsets in 2 minutes it took Fashion-MNIST from 72.33% to 75.23% test top-1 (SVC:
# 69.30%), digits from 95.50% to 95.90%, MNIST from 90.50% to 94.60% (benchmarks/auto_plan.py
# --subsets-only --options linear_probe=false / true, seed 0).
LINEAR_PROBE_MAX_IMAGES = 1_000
PROBE_IMAGES = 1_200  # at most this many training images decoded for the flip probe
# Flips are more to learn: on the Fashion-MNIST subset, with tta, they cost 4.2 points in 5 epochs
# and gained 1.2 in 21 before the speed runs' tricks; with them, they cost 1.2 in 20 epochs and
# gained in 50 (benchmarks/accuracy_per_minute.py and plan_tricks.py, results/).
FLIP_MIN_EPOCHS = 30
# Validation split off a folder beyond this many images trains instead: on the Fashion-MNIST
# subset at 15m (10,000 images), 1,000 validation images against 2,000 raised test top-1 from
# 91.53 to 91.97% in one pair of runs (benchmarks/validation_share.py), 91.52 to 91.80 in another.
VALIDATION_IMAGES = 1_000
# Planning measures candidates best first; on a budget, once one fits, it measures the rest only
# within this share of the budget: measuring them all can take most of a short one.
PLANNING_SHARE = 0.1
# The chosen candidate is timed again over this share of the budget (at most RETIME_SECONDS),
# where that is longer than its first sample. On a 2-core machine whose speed drifted between 288
# and 408 ResNet-20 training images/s from one 2 s window to the next, ten first samples spread
# from 292 to 437/s, ten 2.7 s windows from 281 to 382 (benchmarks/planning_speed.py); one plan's
# first sample said 212/s and 23 epochs at 15m, no flips and no test-time flips, where the run
# then trained 38 (its plan.json; results/option_pairs.md, seed 7).
RETIME_SHARE, RETIME_SECONDS = 0.003, 4.0
# Pixels of one evaluation batch on a CPU, at most: a larger batch outgrows the cache and takes
# longer per image (timed at batches of 32 to 256, MobileNets at 64 to 224 px).
EVAL_BATCH_PIXELS = 2**20
# From scratch: the best of a grid of short real runs on mnist5k (0.3) and the Fashion-MNIST
# subset (0.1) in benchmarks/results/lr_rule.md; 0.1 over 0.05 in results/plan_tricks.md.
SCRATCH_LR = 0.1
SCRATCH_LABEL_SMOOTHING = 0.1
SCRATCH_PROGRESSIVE_RESIZING = 0.75
# Random erasing on a long run from scratch: on the Fashion-MNIST subset at 15m, +0.37, +0.59 and
# +0.26 test points in three seeded pairs of 63 to 70 epochs (results/option_pairs.md); earlier
# single runs +0.84 at 147 epochs and -0.11 at 87 (results/plan_tricks.md).
SCRATCH_RANDOM_ERASING = 0.5
RANDOM_ERASING_MIN_EPOCHS = 60
# Mixup of ImageNet features fine-tuned on fewer than LINEAR_PROBE_MAX_IMAGES: the last epoch's
# test top-1 over two seeds of each 200-image subset at 2m went from 98.05 to 98.15% (digits),
# 95.95 to 97.20% (mnist5k) and 77.50 to 78.42% (Fashion-MNIST) (benchmarks/keep_epoch.py,
# results/keep_epoch.md against results/keep_epoch_mixup.md).
SMALL_DATA_MIXUP = 0.2
# Test-time translations by a 32nd of the side (airbench's pixel at 32 px): over one trained run
# each, the diagonal shifts raised test top-1 by 0.16 on the Fashion-MNIST subset at 5m, 0.7 on
# digits-200 and 0.1 on mnist5k-200 at 2m; a 16th gained less and an 8th lost 0.7 on average
# (benchmarks/tta_views.py, results/tta_views.md).
TTA_SHIFT = 0.03125
# The shifted views are evaluated within the budget: where they would take more than this share
# of it, one view. 200 Fashion-MNIST images at 96 px with a 10,000-image test set in 2m: 3 views
# left one epoch of training (49.5% test top-1, against 76.9% with one view).
TTA_SHIFT_BUDGET_SHARE = 0.1
LR_SEARCH_SHARE = 0.1  # of the budget's epochs, at most, spent on the LR search
LR_SEARCH_MIN_TRIALS, LR_SEARCH_MIN_EPOCHS = 5, 2  # a smaller search is not worth it
# Trials scored on fewer validation images are noise: on 40 images (200 digits) TPE picked an LR
# that diverged at batch 16, where the fixed 0.01 trained well.
LR_SEARCH_MIN_VAL_IMAGES = 500
# A budgeted run on fewer validation images than this keeps its last epoch's weights: the
# schedule ends at a zero LR, and 40 images pick an earlier epoch by chance. Over two seeds of
# each 200-image subset at 2m, the last weights scored 0.94 test points more than the picked
# epoch's on average, 5.1 more once, 0.14 less at worst (benchmarks/keep_epoch.py).
KEEP_LAST_MAX_VAL_IMAGES = 500
# So does a run of this many planned epochs or more: its LR has long been near zero when it ends,
# and picking among the close last epochs on 1,000 validation images follows their noise. On the
# Fashion-MNIST subset at 15m (64 to 90 epochs trained; 64 planned on the slowest day), over 6
# runs the last epoch scored 0.33 test points more than the picked one on average, 0.04 less at
# worst (benchmarks/keep_epoch.py --budget 15m and benchmarks/validation_share.py,
# results/keep_epoch_15m.md).
KEEP_LAST_MIN_EPOCHS = 60
# Warmup of a budgeted run: this share of its epochs, between 1 and the paper's 5. With one epoch
# of 10 steps, epoch-level warmup is no warmup at all.
WARMUP_SHARE, MAX_WARMUP_EPOCHS = 0.03, 5
# Fewer planned epochs than this get `light` augmentation (compare on Fashion-MNIST with
# `benchmarks/auto_plan.py --datasets fashion-mnist --options augment=basic`).
LIGHT_AUGMENT_EPOCHS = 60
INGREDIENTS = {"sam": "SAM", "mutual": "mutual learning", "augmix": "AugMix"}
BUDGET_SCHEDULE = "budget_linear"  # against plateau_v2: benchmarks/auto_plan.py --schedules
SCHEDULE_REASONS = {
    "budget_linear": "the LR decays linearly to zero at the end of the budget, re-planned from "
    "measured epoch times",
    "plateau_v2": "the paper's plateau schedule, with its forced decay at 75% of the time",
}
# Training images below this count favour ImageNet weights over a from-scratch model; for tiny
# images (TINY_SIDE px or less) a CIFAR ResNet at their own scale wins from far fewer images
# (python benchmarks/auto_plan.py: on 4,000 MNIST and 8,000 Fashion-MNIST images it beat
# MobileNetV2 fine-tuned from ImageNet at 64 px; on 160 images it lost to it).
SMALL_DATA = 20_000
TINY_SMALL_DATA = 2_000
# An ImageNet model on images upscaled to UPSCALED px (plan.candidates) is chosen only when it
# still gets this many epochs: on 200 Fashion-MNIST images in 2 minutes, MobileNetV2 reached
# 68.3% test top-1 at 64 px (139 epochs), 72.3% at 96 px (48 epochs), 72.7% at 128 px (20
# epochs, but 135 s wall); SVC on pixels 69.3% (benchmarks/auto_plan.py --subsets-only --options
# input_size=N, before this rule).
UPSCALED_MIN_EPOCHS = 40
# A CIFAR ResNet on 24-31 px images is also measured enlarged to 32 px (plan.candidates), and
# chosen there only when it still gets this many epochs: on the Fashion-MNIST subset at 15m, 28 px
# scored +0.38 and +0.76 test points over 32 where 32 px trained 35-38 epochs (about 30 at full
# size, as estimated here), and 32 px +0.32 over 28 where it trained 69 (about 55); results/
# option_pairs.md, `--options input_size=28` (seeds 7, 8) and `--options input_size=32` (seed 10).
ENLARGED_CIFAR_MIN_EPOCHS = 40


@dataclass
class Plan:
    values: dict[str, Any]  # config keys the plan sets (the user's own win over these)
    reasons: dict[str, str]
    user_keys: list[str]
    data: DataProfile
    machine: dict[str, Any]
    budget_seconds: float | None
    candidates: list[Candidate] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    chosen: int = 0  # index into candidates

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Choice:
    """A planned value and why: the reason the plan table prints beside it ("" prints none)."""

    value: Any
    reason: str = ""


@dataclass
class Situation:
    """What the rules read: the data, the machine, the user's values and the time budget."""

    user: dict[str, Any]
    profile: DataProfile
    machine: dict[str, Any]
    budget: str | None  # as the user gave it, or the CPU default: the reasons quote it
    budget_seconds: float | None
    budget_reserve: float  # the share of the budget training keeps back (training.pipeline)
    clock_started: float  # time.monotonic() the budget counts from
    planning_started: float  # time.perf_counter() when planning began
    notes: list[str] = field(default_factory=list)
    data: str = ""  # DATA as the user gave it

    @property
    def grey(self) -> bool:
        return self.user.get("grayscale", self.profile.grayscale)

    @property
    def channels(self) -> int:
        return 1 if self.grey else 3

    @property
    def cache(self) -> str:
        return self.user.get("cache", Config.cache)


def make_plan(
    spec: str,
    user: dict[str, Any],
    machine: dict[str, Any] | None = None,
    started: float | None = None,
) -> Plan:
    """The run's settings for DATA (`spec`), given the user's own values (`user` wins), on
    `machine` (default: this one, as `describe_machine` sees it). A time budget counts from
    `started` (time.monotonic(); default: now; the CLI passes its process's start, so that
    start-up and imports count too)."""
    from edgecls.training.pipeline import BUDGET_RESERVE  # the training stack loads slowly

    planning_started = time.perf_counter()
    planning_clock = time.monotonic()
    profile = _smaller_validation(profile_data(spec, user.get("val_fraction", VAL_FRACTION)), user)
    machine = machine or describe_machine()
    if not profile.training_images:  # nothing to plan for: loading the data names the problem
        return Plan({}, {}, [], profile, machine, None)
    clock_started = started if started is not None else planning_clock
    situation = _situation(user, profile, machine, BUDGET_RESERVE, clock_started, planning_started)
    situation.data = spec
    if "model" in user or "weights" in user:  # a wrong name or weights file fails here, first
        with on_meta_device():
            create_model(build_config(user, {"input_size": 32}), max(2, profile.classes))
    candidates = candidates_for(profile, user)
    _refuse_a_spent_budget(situation)
    _measure_best_first(candidates, situation)
    _allow_a_short_budget(candidates, situation)
    chosen = _choose(candidates, situation)
    _retime_chosen(chosen, situation)
    values, reasons = _settings(situation, chosen)
    situation.notes.extend(_notes(situation, chosen, candidates))
    values["eval_batch_size"] = _eval_batch(chosen, machine["free_memory_bytes"], machine["device"])
    give_back_freed_memory()
    user_keys = _users_values_win(user, values, reasons)
    return Plan(
        values=values,
        reasons=reasons,
        user_keys=user_keys,
        data=profile,
        machine=machine,
        budget_seconds=situation.budget_seconds,
        candidates=candidates,
        notes=situation.notes,
        seconds=round(time.perf_counter() - planning_started, 2),
        chosen=candidates.index(chosen),
    )


def _smaller_validation(profile: DataProfile, user: dict[str, Any]) -> DataProfile:
    """The profile with at most VALIDATION_IMAGES split off for validation, where the plan
    splits DATA and the user left val_fraction alone: the rest train."""
    if "val_fraction" in user or profile.val_fraction is None:
        return profile
    if profile.validation_images <= VALIDATION_IMAGES:
        return profile
    total = profile.training_images + profile.validation_images
    share = round(VALIDATION_IMAGES / total, 4)
    validation = round(share * total)
    return replace(
        profile,
        training_images=total - validation,
        validation_images=validation,
        val_fraction=share,
    )


def _situation(
    user: dict[str, Any],
    profile: DataProfile,
    machine: dict[str, Any],
    budget_reserve: float,
    clock_started: float,
    planning_started: float,
) -> Situation:
    """The facts the rules read; the budget is the user's or, on a CPU without one,
    DEFAULT_CPU_BUDGET, with a note saying so."""
    budget, notes = user.get("time_budget"), []
    if budget is None and machine["device"] == "cpu":
        budget = DEFAULT_CPU_BUDGET
        notes.append(f"no time_budget given on a CPU: {DEFAULT_CPU_BUDGET} applies")
    return Situation(
        user=user,
        profile=profile,
        machine=machine,
        budget=budget,
        budget_seconds=parse_duration(budget) if budget is not None else None,
        budget_reserve=budget_reserve,
        clock_started=clock_started,
        planning_started=planning_started,
        notes=notes,
    )


def _users_values_win(
    user: dict[str, Any], values: dict[str, Any], reasons: dict[str, str]
) -> list[str]:
    """The config keys the user gave: the plan sets none of them, and its reason is "yours"."""
    user_keys = sorted(k for k in user if k in Config.__dataclass_fields__)
    for key in user_keys:
        values.pop(key, None)
        reasons[key] = "yours"
    return user_keys


# --- choosing the candidate -------------------------------------------------------------------


def _measure_best_first(candidates: list[Candidate], situation: Situation) -> None:
    """Measure and judge the candidates, best first: the first that fits is the one chosen, so on
    a budget the rest are measured only while planning stays within its share (they fill the
    table)."""
    speedups: dict[str, float] = {}  # mixed precision's, per model
    profile, budget_seconds = situation.profile, situation.budget_seconds
    best_first = sorted(
        candidates, key=lambda c: _preference(c, profile, candidates.index(c))[1:], reverse=True
    )
    for candidate in best_first:
        planning = time.perf_counter() - situation.planning_started
        if (
            budget_seconds is not None
            and planning > PLANNING_SHARE * budget_seconds
            and any(c.fits and c.measured for c in candidates)
        ):
            candidate.fits = False
            candidate.why_not = (
                f"not measured: planning keeps to {PLANNING_SHARE:.0%} of the budget"
            )
            continue
        measure(candidate, situation.channels, profile.classes, situation.user.get("amp"), speedups)
        _judge(candidate, situation)


def _judge(candidate: Candidate, situation: Situation) -> None:
    """Whether a measured candidate fits memory, the latency limit and the budget: the first of
    these it misses says why not."""
    for misfit in (_misses_memory, _misses_latency, _misses_budget):
        why_not = misfit(candidate, situation)
        if why_not:
            candidate.fits, candidate.why_not = False, why_not
            return


def _misses_memory(candidate: Candidate, situation: Situation) -> str:
    """The decoded data (unless the disk cache holds it) and a training batch in 70% of what is
    free."""
    profile, channels = situation.profile, situation.channels
    data_bytes = decoded_bytes(profile.images, channels, candidate.input_size)
    if _on_disk(profile, situation.cache, channels, candidate.input_size):
        data_bytes = 0  # read from the disk cache, a batch at a time
    if data_bytes + candidate.memory_bytes > 0.7 * situation.machine["free_memory_bytes"]:
        return "needs more memory than is free"
    return ""


def _misses_latency(candidate: Candidate, situation: Situation) -> str:
    """Batch-1 latency as deployed, measured only under a max_latency_ms."""
    max_latency_ms = situation.user.get("max_latency_ms")
    if max_latency_ms is None:
        return ""
    measure_latency(candidate, situation.channels, situation.profile.classes)
    if candidate.latency_ms > max_latency_ms:
        return f"{candidate.latency_ms:.1f} ms > max_latency_ms"
    return ""


def _misses_budget(candidate: Candidate, situation: Situation) -> str:
    """The epochs the budget leaves the candidate (kept in `candidate.epochs`), against the
    minimum its kind needs, and the more an upscaled input needs."""
    if situation.budget_seconds is None:
        return ""
    profile = situation.profile
    candidate.epochs = _epochs_in_budget(candidate, situation)
    # A user's max_epochs below a model's minimum is what they want, not a misfit.
    wanted = min(MIN_EPOCHS[_kind(candidate)], situation.user.get("max_epochs", 10**9))
    if candidate.epochs < wanted:
        return f"only {candidate.epochs} epochs fit the budget"
    enlarged = _enlargement(candidate, profile)
    if enlarged and candidate.epochs < enlarged[1]:
        return (
            f"{enlarged[0]} {profile.median_side} px images: {candidate.epochs} epochs fit, "
            f"it needs {enlarged[1]}"
        )
    return ""


def _epochs_in_budget(candidate: Candidate, situation: Situation) -> int:
    """Epochs in what is left for training once planning so far, start-up, decoding, the reserve
    and the final evaluation are paid."""
    profile = situation.profile
    train_seconds = _seconds_left_to_train(situation)
    speed = candidate.train_images_per_second  # evaluation runs about 3x faster
    epoch_seconds = (profile.training_images + profile.validation_images / 3) / speed
    final_seconds = _one_view_evaluation_seconds(candidate, profile)
    return max(0, int((train_seconds - final_seconds) / epoch_seconds))


def _spent_and_decoding_seconds(situation: Situation) -> tuple[float, float]:
    """What start-up and planning took so far, and what decoding every image will take."""
    profile = situation.profile
    decoding = profile.images * profile.decode_seconds_per_image * DECODE_RESERVE
    return time.monotonic() - situation.clock_started, decoding


def _seconds_left_to_train(situation: Situation) -> float:
    """The budget less its reserve, what start-up and planning took so far, and decoding."""
    spent, decoding = _spent_and_decoding_seconds(situation)
    return situation.budget_seconds * (1 - situation.budget_reserve) - spent - decoding


def _refuse_a_spent_budget(situation: Situation) -> None:
    """A budget already used up before any model is measured: said at once, not after measuring
    every candidate."""
    if situation.budget_seconds is None or _seconds_left_to_train(situation) > 0:
        return
    spent, decoding = _spent_and_decoding_seconds(situation)
    profile = situation.profile
    raise UserError(
        f"a time_budget of {situation.budget} is too small: start-up took {spent:.1f} s of it "
        f"and decoding {profile.images} images needs about {decoding:.1f} s, before any "
        "training: give a larger time_budget"
    )


def _one_view_evaluation_seconds(candidate: Candidate, profile: DataProfile) -> float:
    """The final evaluation of the validation and test images, one view each: evaluation runs
    about 3x as fast as training."""
    test_images = profile.images - profile.training_images - profile.validation_images
    return (profile.validation_images + test_images) / 3 / candidate.train_images_per_second


def _allow_a_short_budget(candidates: list[Candidate], situation: Situation) -> None:
    """When no candidate fits and some missed only on epochs, the one with the most, if it gets
    at least MIN_SHORT_EPOCHS."""
    short = [c for c in candidates if c.why_not.endswith("fit the budget")]
    if short and not any(c.fits for c in candidates):
        longest = max(short, key=lambda c: c.epochs)
        if longest.epochs >= MIN_SHORT_EPOCHS:
            longest.fits, longest.why_not = True, ""
            situation.notes.append(
                f"a short budget: {longest.epochs} epochs, fewer than a model wants"
            )


def _retime_chosen(chosen: Candidate, situation: Situation) -> None:
    """On a budget, the chosen candidate's speed over a longer window, and the epochs it fits."""
    if situation.budget_seconds is None:
        return
    seconds = min(RETIME_SECONDS, RETIME_SHARE * situation.budget_seconds)
    if seconds <= MEASURE_SECONDS:  # no longer than its first sample: nothing to gain
        return
    retime(chosen, situation.channels, situation.profile.classes, seconds)
    chosen.epochs = max(1, _epochs_in_budget(chosen, situation))


def _choose(candidates: list[Candidate], situation: Situation) -> Candidate:
    """The most preferred candidate; when none fits, a one-line error that says what to change."""
    chosen = max(candidates, key=lambda c: _preference(c, situation.profile, candidates.index(c)))
    if chosen.fits:
        return chosen
    max_latency_ms = situation.user.get("max_latency_ms")
    if max_latency_ms is not None and all(c.why_not.endswith("max_latency_ms") for c in candidates):
        fastest = min(c.latency_ms for c in candidates)
        raise UserError(
            f"no candidate model runs within max_latency_ms={max_latency_ms:g} on this "
            f"machine (fastest: {fastest:.1f} ms at batch 1, ONNX Runtime)"
        )
    if situation.budget_seconds is not None and "memory" not in chosen.why_not:
        raise UserError(
            f"a time_budget of {situation.budget} is too small for any model on this data "
            f"({len(candidates)} candidates measured; the fastest would get "
            f"{max(c.epochs for c in candidates)} epochs): give a larger time_budget"
        )
    raise UserError("no candidate model fits this machine's free memory")


def _preference(candidate: Candidate, profile: DataProfile, order: int) -> tuple:
    """Fits; the kind of model that trains best on data like this; larger input; listed first."""
    return (
        candidate.fits,
        -_kinds_best_first(profile).index(_kind(candidate)),
        candidate.input_size,
        -order,
    )


def _kind(candidate: Candidate) -> str:
    if candidate.weights != "scratch":
        return "imagenet"
    return "cifar" if is_cifar_resnet(candidate.model) else "scratch"


def _kinds_best_first(profile: DataProfile) -> tuple[str, ...]:
    """ImageNet weights on small data, from scratch on large; for tiny images, a CIFAR ResNet at
    their own scale as soon as there are TINY_SMALL_DATA images to learn from."""
    tiny = profile.median_side <= TINY_SIDE
    if profile.training_images < (TINY_SMALL_DATA if tiny else SMALL_DATA):
        return ("imagenet", "cifar", "scratch")
    return ("cifar", "scratch", "imagenet")


def _enlargement(candidate: Candidate, profile: DataProfile) -> tuple[str, int] | None:
    """An input above the candidate's natural size, which pays only in long runs, and the epochs
    it needs: ImageNet features above their 64 px minimum on smaller images, a CIFAR ResNet above
    the images' own side."""
    if is_cifar_resnet(candidate.model):
        if candidate.input_size > cifar_input_size(profile.median_side):
            return "enlarged", ENLARGED_CIFAR_MIN_EPOCHS
    elif candidate.weights != "scratch":
        if candidate.input_size > max(64, math.ceil(profile.median_side / 32) * 32):
            return "upscaled", UPSCALED_MIN_EPOCHS
    return None


def _on_disk(profile: DataProfile, cache: str, channels: int, input_size: int) -> bool:
    """Whether loading will decode into the disk cache, as `cache` and the free memory say."""
    return profile.files and choose_cache(cache, profile.images, channels, input_size) == "disk"


# --- the settings, one rule each --------------------------------------------------------------


def _settings(situation: Situation, chosen: Candidate) -> tuple[dict[str, Any], dict[str, str]]:
    """(values, reasons): the rules' choices in order; a later rule may refine an earlier value."""
    values: dict[str, Any] = {}
    reasons: dict[str, str] = {}
    take = functools.partial(_take, values, reasons)
    take({key: rule(situation, chosen) for key, rule in SETTINGS})
    if situation.budget_seconds is None:
        take(_full_recipe(chosen))
        return values, reasons
    take(
        {
            "time_budget": Choice(situation.budget_seconds),
            "schedule": Choice(BUDGET_SCHEDULE),
            "max_epochs": Choice(200),
        }
    )
    costs, kept = _affordable_recipe(situation, chosen, values)
    take(_recipe_within_budget(situation, chosen, kept))
    take(_workers(situation, values["augment"]))
    search_epochs = chosen.epochs / (costs["augmix"] if "augmix" in kept else 1)
    lr = _lr_within_budget(situation, chosen, search_epochs)
    take(lr)
    trained = _with_resized_epochs(situation, chosen)
    epochs = trained.epochs / math.prod(costs[name] for name in kept)
    if "lr_search_trials" in lr:
        epochs *= 1 - LR_SEARCH_SHARE
    take(
        {
            "max_epochs": _max_epochs(situation, epochs),
            "warmup_epochs": _warmup(epochs),
            "keep_epoch": _keep_epoch(situation, epochs),
        }
    )
    take(_speed_run_tricks(trained))
    take(_small_data_mixup(situation, chosen))
    return values, reasons


def _with_resized_epochs(situation: Situation, chosen: Candidate) -> Candidate:
    """From scratch, progressive resizing trains its early epochs on fewer pixels: the epochs
    that fit the budget are more than the full-size estimate. The rules measured in epochs really
    trained (warmup, keep_epoch, random erasing) take these; the recipe, augmentation and LR
    search rules keep the full-size estimate they were set on."""
    if chosen.weights != "scratch":
        return chosen
    start_share = situation.user.get("progressive_resizing", SCRATCH_PROGRESSIVE_RESIZING)
    gain = resized_epochs_gain(chosen.input_size, start_share)
    return replace(chosen, epochs=int(chosen.epochs * gain))


def resized_epochs_gain(input_size: int, start_share: float) -> float:
    """Epochs trained under progressive resizing per full-size epoch in the same time, an
    epoch's cost taken as its pixels; the side follows the share of the budget spent."""
    steps = 200
    sides = (progressive_side(input_size, start_share, (i + 0.5) / steps) for i in range(steps))
    return sum((input_size / side) ** 2 for side in sides) / steps


def _take(values: dict[str, Any], reasons: dict[str, str], choices: dict[str, Choice]) -> None:
    """Apply `choices` in order: a value replaces an earlier one in place; so does a reason."""
    for key, choice in choices.items():
        values[key] = choice.value
        if choice.reason:
            reasons[key] = choice.reason


def _model(situation: Situation, chosen: Candidate) -> Choice:
    speed = f"{chosen.train_images_per_second:.0f} training images/s here"
    return Choice(chosen.model, f"{chosen.weights}; {speed}")


def _pretrained(situation: Situation, chosen: Candidate) -> Choice:
    return Choice(chosen.weights != "scratch")


def _input_size(situation: Situation, chosen: Candidate) -> Choice:
    side = f"images are about {situation.profile.median_side} px on the shorter side"
    enlarged = _enlargement(chosen, situation.profile)
    if enlarged:
        side += f"; {enlarged[0]}: {chosen.epochs} epochs fit (from {enlarged[1]})"
    return Choice(chosen.input_size, side)


def _grayscale(situation: Situation, chosen: Candidate) -> Choice:
    grey = situation.grey
    return Choice(grey, "every sampled image is grey" if grey else "colour images")


def _batch_size(situation: Situation, chosen: Candidate) -> Choice:
    return Choice(chosen.batch_size)


def _basic_augment(situation: Situation, chosen: Candidate) -> Choice:
    """`basic` until the recipe's rules say otherwise."""
    return Choice("basic")


@functools.lru_cache(maxsize=8)
def _flip_probe(spec: str, per_class: int, stamp: int | None) -> FlipProbe | None:
    """The probe of DATA once per process while its folder is unchanged (`stamp`: its mtime):
    planning again, as a resume or a second call does, costs nothing."""
    sample = labelled_sample(spec, per_class=per_class, side=PROBE_SIDE)
    return probe_flips(*sample) if sample is not None else None


def _hflip(situation: Situation, chosen: Candidate) -> Choice:
    """Flips where a mirror image keeps its class (the probe of evaluate.flips, a few seconds)
    and the budget gives FLIP_MIN_EPOCHS; without the probe (no ImageNet weights, a torchvision
    built-in), for colour images only."""
    if "hflip" in situation.user:  # the user's value wins: no probe
        return Choice(situation.user["hflip"])
    if situation.budget_seconds is not None and chosen.epochs < FLIP_MIN_EPOCHS:
        return Choice(
            False, f"a short run: flips pay from {FLIP_MIN_EPOCHS} epochs, {chosen.epochs} fit"
        )
    per_class = max(4, min(PROBE_PER_CLASS, PROBE_IMAGES // max(2, situation.profile.classes)))
    path = Path(situation.data).expanduser()
    stamp = path.stat().st_mtime_ns if path.exists() else None
    probe = _flip_probe(situation.data, per_class, stamp)
    if probe is None:
        return Choice(not situation.grey, "no flip probe here: flips for colour images only")
    kept = probe.mirrored / max(probe.plain, 1e-9)
    reason = (
        f"mirrored images keep {kept:.0%} of a probe's top-1 ({probe.images} images, "
        f"{probe.seconds:.1f} s)"
    )
    if probe.keeps_class:
        return Choice(True, reason)
    return Choice(
        False, f"{reason}: a mirror changes the class (flips need {MIRROR_KEEPS_CLASS:.0%})"
    )


def _tta(situation: Situation, chosen: Candidate) -> Choice:
    """Test-time mirror averaging where flips keep the class: free accuracy for the training
    time (benchmarks/accuracy_per_minute.py), twice the inference work; one view under a
    latency limit, which the candidates were timed for."""
    if situation.user.get("max_latency_ms") is not None:
        return Choice(False, "one view: max_latency_ms was timed for one")
    if not _hflip(situation, chosen).value:
        return Choice(False)
    return Choice(
        True,
        "the image and its mirror, averaged in the final scores and the exports "
        "(2x inference; tta=false for one view)",
    )


def _tta_shift(situation: Situation, chosen: Candidate) -> Choice:
    """Test-time translations for any data: a shift of a 32nd of the side keeps every class,
    and the trained weights score higher on the average of the shifted views
    (benchmarks/tta_views.py); one view under a latency limit, as for the mirror."""
    if situation.user.get("max_latency_ms") is not None:
        return Choice(0.0, "one view: max_latency_ms was timed for one")
    unshifted = 2 if _tta(situation, chosen).value else 1
    views = 3 * unshifted
    if situation.budget_seconds is not None and chosen.train_images_per_second:
        extra = 2 * unshifted * _one_view_evaluation_seconds(chosen, situation.profile)
        if extra > TTA_SHIFT_BUDGET_SHARE * situation.budget_seconds:
            return Choice(
                0.0,
                f"one view: the shifted views would take {extra:.0f} s of the final evaluation, "
                f"over {TTA_SHIFT_BUDGET_SHARE:.0%} of the budget",
            )
    pixels = shift_pixels(TTA_SHIFT, chosen.input_size)
    return Choice(
        TTA_SHIFT,
        f"each view also moved {pixels} px up-left and down-right, averaged in the final scores "
        f"and the exports ({views}x inference; tta_shift=0 for fewer views)",
    )


def _fixed_lr(situation: Situation, chosen: Candidate) -> Choice:
    """Fine-tuning takes a smaller LR than training from scratch; from scratch, SCRATCH_LR."""
    return Choice(0.01 if chosen.weights != "scratch" else SCRATCH_LR)


def _one_warmup_epoch(situation: Situation, chosen: Candidate) -> Choice:
    return Choice(1)


def _amp(situation: Situation, chosen: Candidate) -> Choice:
    """Mixed precision where the candidate was timed faster in it, by AMP_MIN_SPEEDUP."""
    if chosen.amp_speedup is None:
        return Choice(chosen.amp)
    return Choice(
        chosen.amp,
        f"mixed precision trains {chosen.amp_speedup:.1f}x as fast as fp32 here"
        + ("" if chosen.amp else f" (it needs {AMP_MIN_SPEEDUP}x)"),
    )


def _val_fraction(situation: Situation, chosen: Candidate) -> Choice:
    profile = situation.profile
    if profile.val_fraction in (None, VAL_FRACTION):
        return Choice(VAL_FRACTION)
    return Choice(
        profile.val_fraction,
        f"{profile.validation_images} validation images pick the epoch and the LR; the other "
        f"{profile.training_images} train",
    )


def _linear_probe(situation: Situation, chosen: Candidate) -> Choice:
    """LP-FT for pretrained weights on fewer than LINEAR_PROBE_MAX_IMAGES, with a linear head."""
    images = situation.profile.training_images
    probe = (
        chosen.weights != "scratch"
        and images < LINEAR_PROBE_MAX_IMAGES
        and situation.user.get("head", Config.head) == "linear"
    )
    if not probe:
        return Choice(False)
    return Choice(
        True,
        f"{images} training images: the head starts as a logistic regression on the frozen "
        "ImageNet features (LP-FT)",
    )


SETTINGS = (
    ("model", _model),
    ("pretrained", _pretrained),
    ("input_size", _input_size),
    ("grayscale", _grayscale),
    ("batch_size", _batch_size),
    ("augment", _basic_augment),
    ("hflip", _hflip),
    ("tta", _tta),
    ("tta_shift", _tta_shift),
    ("lr", _fixed_lr),
    ("warmup_epochs", _one_warmup_epoch),
    ("amp", _amp),
    ("linear_probe", _linear_probe),
    ("val_fraction", _val_fraction),
)


def _paper_recipe(chosen: Candidate) -> dict[str, Any]:
    return {
        "sam": True,
        "mutual": "mobilenetv3" in chosen.model,  # the paper pairs its MobileNetV3s
        "augment": "augmix",
        "no_bias_decay": True,
    }


def _full_recipe(chosen: Candidate) -> dict[str, Choice]:
    """No budget: the paper's full adaptive recipe, its LR searched."""
    choices = {key: Choice(value) for key, value in _paper_recipe(chosen).items()}
    return {**choices, "lr": Choice("tpe", "no budget: the paper's full adaptive recipe")}


def _affordable_recipe(
    situation: Situation, chosen: Candidate, values: dict[str, Any]
) -> tuple[dict[str, float], list[str]]:
    """(costs, kept): the ingredients of the paper's recipe the budget affords, each timed here
    at `values`; nothing on too few training images. Notes say what was dropped and kept."""
    images = situation.profile.training_images
    if images < FULL_RECIPE_MIN_IMAGES:  # nothing to measure
        situation.notes.append(
            f"{images} training images: too few for the paper's recipe "
            f"(it needs {FULL_RECIPE_MIN_IMAGES})"
        )
        return {}, []
    recipe = _paper_recipe(chosen)
    wanted = [name for name in ("sam", "mutual", "augmix") if recipe.get(name, True)]
    kind = "scratch" if chosen.weights == "scratch" else "imagenet"
    if chosen.epochs < FULL_RECIPE_EPOCHS[kind]:  # each costs at least a plain step: none fits
        situation.notes.append(
            f"dropped for the budget, not timed: {', '.join(INGREDIENTS[n] for n in wanted)} "
            f"(the budget fits {chosen.epochs:.0f} plain epochs, the paper's recipe "
            f"needs {FULL_RECIPE_EPOCHS[kind]})"
        )
        return {}, []
    config = build_config({**situation.user, **values, "lr": 0.01})
    costs = measure_ingredients(chosen, situation.channels, situation.profile.classes, config)
    kept, dropped = affordable_ingredients(costs, wanted, chosen.epochs, FULL_RECIPE_EPOCHS[kind])
    if dropped:
        situation.notes.append(
            f"dropped for the budget, costliest first: {_described(costs, dropped)}"
        )
    if kept:
        situation.notes.append(f"kept from the paper's recipe: {_described(costs, kept)}")
    return costs, kept


def _described(costs: dict[str, float], names: list[str]) -> str:
    return ", ".join(f"{INGREDIENTS[n]} x{costs[n]:.1f}" for n in names)


def affordable_ingredients(
    costs: dict[str, float], wanted: list[str], plain_epochs: float, needed_epochs: float
) -> tuple[list[str], list[str]]:
    """(kept, dropped): drop the costliest ingredient until the rest still leave `needed_epochs`
    of the `plain_epochs` a budget fits without any."""
    kept, dropped = list(wanted), []
    while kept and plain_epochs / math.prod(costs[name] for name in kept) < needed_epochs:
        dropped.append(max(kept, key=costs.__getitem__))
        kept.remove(dropped[-1])
    return kept, dropped


def _recipe_within_budget(
    situation: Situation, chosen: Candidate, kept: list[str]
) -> dict[str, Choice]:
    """The kept ingredients on; no bias decay from FULL_RECIPE_MIN_IMAGES; without AugMix, a short
    run underfits under strong augmentation: `light` below LIGHT_AUGMENT_EPOCHS."""
    if "augmix" in kept:
        augment = Choice("augmix")
    elif chosen.epochs < LIGHT_AUGMENT_EPOCHS:
        augment = Choice("light", "a short run: no rotation or colour jitter, which it underfits")
    else:
        augment = Choice("basic")
    return {
        "sam": Choice("sam" in kept),
        "mutual": Choice("mutual" in kept),
        "augment": augment,
        "no_bias_decay": Choice(situation.profile.training_images >= FULL_RECIPE_MIN_IMAGES),
    }


def _workers(situation: Situation, augment: str) -> dict[str, Choice]:
    """AugMix on a CPU runs in the training process: loader workers start again every epoch and
    take the cores training needs (on 200 MNIST digits in 2 minutes, epochs took longer with 2
    workers than without, and the run ended less accurate)."""
    if augment != "augmix" or situation.machine["device"] != "cpu":
        return {}
    return {"workers": Choice(0, "AugMix in the training process: workers would share its cores")}


def _lr_within_budget(situation: Situation, chosen: Candidate, epochs: float) -> dict[str, Choice]:
    """A TPE search of the LR in about LR_SEARCH_SHARE of the budget's `epochs`, when there are
    the validation images to score it and the share is large enough; else the fixed LR."""
    fixed = _fixed_lr(situation, chosen).value
    validation = situation.profile.validation_images
    if validation < LR_SEARCH_MIN_VAL_IMAGES:
        return {
            "lr": Choice(
                fixed,
                f"fixed: {validation} validation images are too few to score an LR search on "
                f"(it needs {LR_SEARCH_MIN_VAL_IMAGES})",
            )
        }
    search = _lr_search_size(epochs)
    if search is None:
        return {
            "lr": Choice(
                fixed,
                f"fixed: an LR search of {LR_SEARCH_MIN_TRIALS} trials of "
                f"{LR_SEARCH_MIN_EPOCHS} epochs would take more than {LR_SEARCH_SHARE:.0%} "
                "of the budget",
            )
        }
    trials, trial_epochs = search
    return {
        "lr": Choice(
            "tpe",
            f"TPE search, {trials} trials of {trial_epochs} epochs: about "
            f"{LR_SEARCH_SHARE:.0%} of the budget",
        ),
        "lr_search_trials": Choice(trials),
        "lr_search_epochs": Choice(trial_epochs),
    }


def _lr_search_size(epochs: float) -> tuple[int, int] | None:
    """(trials, epochs per trial) of an LR search that takes about LR_SEARCH_SHARE of the
    budget's `epochs`, or None when that share is too small for a useful search."""
    share = LR_SEARCH_SHARE * epochs
    trial_epochs = min(Config.lr_search_epochs, int(share // LR_SEARCH_MIN_TRIALS))
    if trial_epochs < LR_SEARCH_MIN_EPOCHS:
        return None
    return min(Config.lr_search_trials, int(share // trial_epochs)), trial_epochs


def _keep_epoch(situation: Situation, epochs: float) -> Choice:
    """The last epoch's weights where validation is too small to pick an epoch by, or the run so
    long that its last epochs differ by less than validation's noise: the budget's schedule ends
    at a zero LR."""
    validation = situation.profile.validation_images
    if validation < KEEP_LAST_MAX_VAL_IMAGES:
        return Choice(
            "last",
            f"the last epoch's weights, at the schedule's zero LR: {validation} validation images "
            f"are too few to pick an epoch by (it needs {KEEP_LAST_MAX_VAL_IMAGES})",
        )
    if epochs >= KEEP_LAST_MIN_EPOCHS:
        return Choice(
            "last",
            f"the last epoch's weights, at the schedule's zero LR: in about {int(epochs)} epochs "
            f"(from {KEEP_LAST_MIN_EPOCHS}) the last ones differ by less than validation's noise",
        )
    return Choice("best")


def _max_epochs(situation: Situation, epochs: float) -> Choice:
    """A ceiling the budget stops well before: the schedule ends the run with the budget."""
    return Choice(
        200,
        f"about {int(epochs)} epochs fit {situation.budget} at the measured speed; "
        + SCHEDULE_REASONS[BUDGET_SCHEDULE],
    )


def _warmup(epochs: float) -> Choice:
    return Choice(
        max(1, min(MAX_WARMUP_EPOCHS, round(WARMUP_SHARE * epochs))),
        f"{WARMUP_SHARE:.0%} of the epochs, 1 to {MAX_WARMUP_EPOCHS}",
    )


def _speed_run_tricks(chosen: Candidate) -> dict[str, Choice]:
    """From scratch within a budget, the CIFAR-10 speed runs' cheap tricks that raised test top-1
    at equal wall time (benchmarks/plan_tricks.py on the Fashion-MNIST subset at 5m: together
    +1.0 point; EMA and Nesterov momentum gained nothing there and stay off); random erasing
    where RANDOM_ERASING_MIN_EPOCHS fit (+0.41 on average at 15m)."""
    if chosen.weights != "scratch":
        return {}
    tricks = {
        "label_smoothing": Choice(SCRATCH_LABEL_SMOOTHING, "from scratch: softer targets (004)"),
        "progressive_resizing": Choice(
            SCRATCH_PROGRESSIVE_RESIZING,
            f"early epochs at {SCRATCH_PROGRESSIVE_RESIZING:.0%} of the side, full by three "
            "quarters of the budget: more epochs fit (FFCV)",
        ),
        "whiten_stem": Choice(True, "the first convolution starts as a whitening of patches"),
    }
    if chosen.epochs >= RANDOM_ERASING_MIN_EPOCHS:
        tricks["random_erasing"] = Choice(
            SCRATCH_RANDOM_ERASING,
            f"{chosen.epochs} epochs fit: a long run takes erased boxes as regularization (001)",
        )
    return tricks


def _small_data_mixup(situation: Situation, chosen: Candidate) -> dict[str, Choice]:
    """Mixup where ImageNet features are fine-tuned on a few hundred images: blends of the
    images give the new head more than the training images alone."""
    images = situation.profile.training_images
    if chosen.weights == "scratch" or images >= LINEAR_PROBE_MAX_IMAGES:
        return {}
    return {
        "mixup": Choice(
            SMALL_DATA_MIXUP,
            f"{images} training images: pairs of images blended, Beta({SMALL_DATA_MIXUP:g}) "
            "weights (mixup)",
        )
    }


def _eval_batch(candidate: Candidate, free_bytes: int, device: str) -> int:
    """Evaluation keeps no activations for backward: a few times the training batch fits. On a
    CPU a batch beyond about EVAL_BATCH_PIXELS runs out of cache and is slower per image."""
    per_image = max(1, candidate.memory_bytes // max(1, candidate.batch_size))
    largest = 256
    if device == "cpu":
        fitting = EVAL_BATCH_PIXELS // candidate.input_size**2
        largest = max(32, min(largest, 2 ** int(math.log2(max(1, fitting)))))
    return int(max(16, min(largest, 0.2 * free_bytes // per_image)))


# --- notes ------------------------------------------------------------------------------------


def _notes(situation: Situation, chosen: Candidate, candidates: list[Candidate]) -> list[str]:
    """Why from scratch, when it is; where the images are read from, when it is the disk."""
    notes = []
    if chosen.weights == "scratch":
        notes.append(_why_scratch(situation.profile, candidates, situation.user))
    profile, channels, cache = situation.profile, situation.channels, situation.cache
    if _on_disk(profile, cache, channels, chosen.input_size):
        size = decoded_bytes(profile.images, channels, chosen.input_size) / 2**30
        notes.append(
            f"images: the disk cache ({size:.1f} GB decoded"
            + (", more than memory holds comfortably)" if cache == "auto" else ", cache=disk)")
        )
    return notes


def _why_scratch(profile: DataProfile, candidates: list[Candidate], user: dict[str, Any]) -> str:
    if "model" in user or user.get("pretrained") is False:
        return "training from scratch, as you asked"
    if all(c.weights == "scratch" for c in candidates):
        return "no ImageNet weights at hand: training from scratch"
    if _kinds_best_first(profile)[0] == "cifar":
        return (
            f"training from scratch: {profile.training_images} images of about "
            f"{profile.median_side} px teach a CIFAR ResNet at their own scale more than "
            "ImageNet features that need them upscaled"
        )
    return f"training from scratch: {profile.training_images} images are enough for it"
