"""What to train, given the data, the machine, the weights at hand and the time budget.

`edgecls train DATA` without a recipe plans its run here:
1. profile the data from file headers (count, classes, image sizes, grey or colour, imbalance);
2. list candidates: models of the paper's family from scratch and the small ImageNet models whose
   weights are at hand (installed packages, the timm hub cache), at input sizes from the images'
   own scale (rounded up to a multiple of 32) down to 32;
3. time a few training steps of each on this machine, and estimate memory (decoded data plus the
   activations a training batch keeps for the backward pass);
4. keep the candidates that fit memory and the budget with enough epochs, and pick the best by a
   fixed preference: ImageNet weights on small data, then the largest input up to the images' own
   scale, then the larger model.
Every value the user gave wins; the plan says which choices were the user's.
"""

from __future__ import annotations

import ctypes
import dataclasses
import math
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch
from PIL import Image

from edgecls.config import Config, build_config, parse_duration
from edgecls.data.cache import choose_cache, decoded_bytes
from edgecls.errors import UserError
from edgecls.models import create_model, packaged_weights

DEFAULT_CPU_BUDGET = "10m"  # a CPU run with no time_budget stays interactive
# Reading and resizing one image file: timed on DECODE_SAMPLE of the files, in one thread, with
# a reserve (20,000 28 px PNGs took 0.2 ms each, 256 px JPEGs 2.5 ms); built-ins are arrays.
DECODE_SAMPLE, DECODE_RESERVE = 24, 1.25
BUILTIN_DECODE_SECONDS = 0.0005
# Epochs a candidate must reach within the budget to be worth training.
# The CIFAR ResNet on 8,000 Fashion-MNIST images (test top-1): 86.92% in 11 epochs (4m) against
# 87.04% for MobileNetV3-small at 64 px in 14; 88.23% in 15 (5m) against 87.19% in 17.
MIN_EPOCHS = {"imagenet": 10, "scratch": 15, "cifar": 12}
MIN_SHORT_EPOCHS = 3  # when nothing reaches its minimum, the most epochs, if at least this many
# Epochs the paper's full recipe (SAM, mutual learning, AugMix) must still reach within the
# budget, at its measured cost; below that its costliest ingredients are dropped first. Kept
# with only 41 epochs, SAM and AugMix cost 15 points on 200 Fashion-MNIST images in 2 minutes
# (benchmarks/auto_plan.py --schedules at the commit before this rule).
FULL_RECIPE_EPOCHS = {"imagenet": 100, "scratch": 150}
# Nor on fewer training images than this, no bias decay included: with 160 images in 2 minutes,
# AugMix reached 59.1% test top-1 on Fashion-MNIST against 72.8% with `basic` (SVC: 69.3%), and
# no bias decay 85.1% on digits against 92.3% without (SVC: 93.4%).
FULL_RECIPE_MIN_IMAGES = 1_000
# Pretrained weights on fewer training images than this start from a linear probe (LP-FT): on the
# 160-image subsets in 2 minutes it took Fashion-MNIST from 72.33% to 75.23% test top-1 (SVC:
# 69.30%), digits from 95.50% to 95.90%, MNIST from 90.50% to 94.60% (benchmarks/auto_plan.py
# --subsets-only --options linear_probe=false / true, seed 0).
LINEAR_PROBE_MAX_IMAGES = 1_000
# Timed training steps per candidate, after one untimed: at least MEASURE_STEPS[0], on until
# MEASURE_SECONDS (at most MEASURE_STEPS[1]); their median. Two steps of ResNet-20 at 32 px on a
# shared 2-core machine gave 330 to 490 images/s from one run to the next.
MEASURE_STEPS, MEASURE_SECONDS = (2, 8), 0.6
# Where the hardware has it (a GPU, a CPU with AVX-512 BF16 or AMX), each candidate is also timed
# in mixed precision, kept when at least this much faster: on a 2-core AMX CPU bf16 trained the
# ResNets 1.8-2.3x faster and the depthwise MobileNetV3s 0.6-0.7x (benchmarks/amp_speed.py).
AMP_MIN_SPEEDUP = 1.15
# Planning measures candidates best first; on a budget, once one fits, it measures the rest only
# within this share of the budget: nine candidates took 15 s of a 25 s budget.
PLANNING_SHARE = 0.1
# Pixels of one evaluation batch on a CPU, at most: ms per image at batch 32 / 64 / 128 / 256 on
# 2 cores were 2.2 / 2.9 / 3.7 / 6.6 (MobileNetV3-small, 224 px), 2.3 at 64 against 3.9 at 256
# (MobileNetV2, 96 px), 0.42 / 0.29 / 0.30 at 64 / 128 / 256 (MobileNetV3-small, 64 px).
EVAL_BATCH_PIXELS = 2**20
LR_SEARCH_SHARE = 0.1  # of the budget's epochs, at most, spent on the LR search
LR_SEARCH_MIN_TRIALS, LR_SEARCH_MIN_EPOCHS = 5, 2  # a smaller search is not worth it
# Trials scored on fewer validation images are noise: on 40 images (200 digits) TPE picked an LR
# of 0.028 that diverged at batch 16 (65.8% test top-1, against 95.3% at the fixed 0.01).
LR_SEARCH_MIN_VAL_IMAGES = 500
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
# (benchmarks/auto_plan.py: on 4,000 MNIST and 8,000 Fashion-MNIST images it beat MobileNetV2
# fine-tuned from ImageNet at 64 px; on 160 images it lost to it).
SMALL_DATA = 20_000
TINY_SIDE, TINY_SMALL_DATA = 32, 2_000
# ImageNet features on images smaller than their 64 px minimum are also measured at UPSCALED px,
# chosen when it still gets UPSCALED_MIN_EPOCHS: on 200 Fashion-MNIST images in 2 minutes,
# MobileNetV2 reached 68.3% test top-1 at 64 px (139 epochs), 72.3% at 96 px (48 epochs), 72.7%
# at 128 px (20 epochs, but 135 s wall); SVC on pixels 69.3% (benchmarks/auto_plan.py
# --subsets-only --options input_size=N, before this rule).
UPSCALED, UPSCALED_MIN_EPOCHS = 96, 40
SCRATCH_MODELS = ("mobilenetv3_small_100", "mobilenetv3_large_100")
CIFAR_MODELS = ("resnet20_cifar",)  # full resolution to the last stage: for tiny images only
PRETRAINED_MODELS = ("mobilenetv2_100", "tf_efficientnet_lite0", "mobilenetv3_large_100")
# Built-ins have no files to read headers from: what they hold.
BUILTIN_PROFILES = {
    "digits": (1797, 10, 8, True),
    "mnist5k": (5000, 10, 28, True),
    "fashion-mnist": (60000, 10, 28, True),
    "fashionmnist": (60000, 10, 28, True),
    "cifar10": (50000, 10, 32, False),
    "cifar100": (50000, 100, 32, False),
    "svhn": (73257, 10, 32, False),
}
PROFILE_SAMPLE = 300  # image headers read to learn sizes and colour
VAL_FRACTION = Config.val_fraction  # what is split off for validation when DATA has no val/


@dataclass
class DataProfile:
    images: int  # in every split
    classes: int
    median_side: int  # the shorter side of a typical image, in pixels
    grayscale: bool
    imbalance: float  # largest class / smallest class
    training_images: int = 0  # what an epoch trains on (the train split less its validation part)
    validation_images: int = 0
    files: bool = False  # a folder or list file (which the disk cache can hold), not a built-in
    decode_seconds_per_image: float = BUILTIN_DECODE_SECONDS


@dataclass
class Candidate:
    model: str
    input_size: int
    weights: str  # "imagenet: package", "imagenet: hub cache" or "scratch"
    batch_size: int
    train_images_per_second: float = 0.0
    memory_bytes: int = 0
    parameters: int = 0  # the deployed model's size
    epochs: int = 0
    latency_ms: float | None = None
    amp: bool = False  # trains in mixed precision
    amp_speedup: float | None = None  # its training speed over fp32's, where both were timed
    fits: bool = True
    why_not: str = ""

    @property
    def measured(self) -> bool:
        return self.train_images_per_second > 0


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


# --- the data ---------------------------------------------------------------------------------


def profile_data(spec: str) -> DataProfile:
    """Count, classes, typical size and colour of DATA, from file headers (nothing decoded)."""
    from edgecls.data import BUILTIN_DATASETS
    from edgecls.data.loader import no_such_data
    from edgecls.data.sources import discover
    from edgecls.data.splits import Problems

    if spec.lower() in BUILTIN_PROFILES and not Path(spec).exists():
        count, classes, side, grey = BUILTIN_PROFILES[spec.lower()]
        validation = round(VAL_FRACTION * count)
        return DataProfile(count, classes, side, grey, 1.0, count - validation, validation)
    path = Path(spec).expanduser()
    if not path.exists():
        if spec.lower() in BUILTIN_DATASETS:  # a torchvision dataset: its root says more
            return DataProfile(0, 0, 224, False, 1.0)
        raise no_such_data(spec)
    problems = Problems()
    files = discover(path, problems)
    if problems.errors:  # the same first problem loading the data would stop at
        raise UserError(problems.errors[0])
    items = [item for split in files.values() for item in split.items]
    per_class = Counter(label for _, label in files["train"].items)
    step = max(1, len(items) // PROFILE_SAMPLE)
    sides, grey = [], 0
    for file, _ in items[::step]:
        try:
            with Image.open(file) as image:
                sides.append(min(image.size))
                grey += image.mode in ("1", "L", "LA", "I", "I;16", "F") or _looks_grey(image)
        except (OSError, ValueError, Image.DecompressionBombError):
            continue
    sides.sort()
    median_side = sides[len(sides) // 2] if sides else 224
    train = len(files["train"].items)
    validation = len(files["val"].items) if "val" in files else round(VAL_FRACTION * train)
    return DataProfile(
        training_images=train if "val" in files else train - validation,
        validation_images=validation,
        images=len(items),
        classes=len(per_class),
        median_side=median_side,
        grayscale=bool(sides) and grey == len(sides),
        imbalance=max(per_class.values()) / max(1, min(per_class.values())) if per_class else 1.0,
        files=True,
        decode_seconds_per_image=_decode_seconds(
            [file for file, _ in items], min(224, math.ceil(median_side / 32) * 32)
        ),
    )


def _decode_seconds(files: list[Path], input_size: int) -> float:
    """Seconds to decode one of `files` as loading will, timed on a spread sample."""
    from edgecls.data.loader import decode_file

    sample = files[:: max(1, len(files) // DECODE_SAMPLE)][:DECODE_SAMPLE]
    started = time.perf_counter()
    for file in sample:
        decode_file(file, input_size=input_size, grayscale=False, boxes={})
    return (time.perf_counter() - started) / max(1, len(sample))


def _looks_grey(image: Image.Image) -> bool:
    """An RGB image whose channels agree (saved as colour, grey in fact), checked on a thumbnail."""
    if image.mode not in ("RGB", "RGBA", "P"):
        return False
    small = np.asarray(image.convert("RGB").resize((16, 16)), dtype=np.int16)
    return bool((small.max(axis=2) - small.min(axis=2) <= 8).all())


# --- the machine ------------------------------------------------------------------------------


def describe_machine() -> dict[str, Any]:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    machine = {
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "cores": cores,
        "free_memory_bytes": psutil.virtual_memory().available,
    }
    if machine["device"] == "cuda":
        machine["gpu"] = torch.cuda.get_device_name(0)
    return machine


def weights_source(model: str) -> str | None:
    """Where ImageNet weights for `model` would come from without a download, if anywhere."""
    if packaged_weights(model):
        return "imagenet: package"
    try:
        import timm
        from huggingface_hub import try_to_load_from_cache

        hub_id = timm.models.get_pretrained_cfg(model).hf_hub_id
        if hub_id and isinstance(try_to_load_from_cache(hub_id, "model.safetensors"), str):
            return "imagenet: hub cache"
    except Exception:  # no pretrained config, or no cache: from scratch
        return None
    return None


def fast_mixed_precision(device: str) -> bool:
    """Whether autocast has hardware under it: any CUDA GPU, a CPU with AVX-512 BF16 or AMX."""
    if device == "cuda":
        return True
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, check, lambda: False)() for check in checks)


def measure(
    candidate: Candidate,
    channels: int,
    classes: int,
    amp: bool | None = None,
    speedups: dict[str, float] | None = None,
) -> None:
    """Training images per second and activation memory of a candidate, timed on this machine;
    in fp32 and, unless `amp` says which, in mixed precision where the hardware has it. The
    mixed-precision speed-up is timed once per model and kept in `speedups` for its other input
    sizes (at 224 px one bf16 step of MobileNetV3-large took 4 s)."""
    from edgecls.device import mixed_precision, select_device

    device = select_device()
    config = build_config(
        {
            "model": candidate.model,
            "input_size": candidate.input_size,
            "grayscale": channels == 1,
        }
    )
    model = create_model(config, max(2, classes))
    model = model.to(device, memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
    size = candidate.input_size
    batch = torch.rand(candidate.batch_size, channels, size, size, device=device)
    batch = batch.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, max(2, classes), (candidate.batch_size,), device=device)
    saved = []

    def keep_size(tensor: torch.Tensor) -> torch.Tensor:
        saved.append(tensor.numel() * tensor.element_size())
        return tensor

    def train_step(mixed: bool) -> None:
        with mixed_precision(device, mixed):
            loss = torch.nn.functional.cross_entropy(model(batch), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    def step_seconds(mixed: bool, least: int) -> float:
        train_step(mixed)  # warm-up
        steps: list[float] = []
        while len(steps) < MEASURE_STEPS[1] and (
            len(steps) < least or sum(steps) < MEASURE_SECONDS
        ):
            started = time.perf_counter()
            train_step(mixed)
            steps.append(time.perf_counter() - started)
        return float(np.median(steps))

    with torch.autograd.graph.saved_tensors_hooks(keep_size, lambda tensor: tensor):
        train_step(bool(amp))  # the activations one batch keeps for backward
    activations = sum(saved)
    seconds = step_seconds(bool(amp), MEASURE_STEPS[0])
    candidate.amp = bool(amp)
    if amp is None and fast_mixed_precision(device.type):
        speedups = {} if speedups is None else speedups
        if candidate.model not in speedups:  # one step decides: the gaps are 0.6x or 1.8x
            speedups[candidate.model] = round(seconds / step_seconds(True, 1), 2)
        candidate.amp_speedup = speedups[candidate.model]
        if candidate.amp_speedup >= AMP_MIN_SPEEDUP:
            candidate.amp, seconds = True, seconds / candidate.amp_speedup
    candidate.train_images_per_second = candidate.batch_size / seconds
    candidate.parameters = sum(p.numel() for p in model.parameters())
    # weights, gradients, momentum and a copy, 4 bytes each
    candidate.memory_bytes = activations + 4 * 4 * candidate.parameters


def measure_ingredients(
    candidate: Candidate, channels: int, classes: int, config: Config
) -> dict[str, float]:
    """How many times a plain training step each ingredient of the paper's recipe costs, timed
    on this machine: SAM's second pass, mutual learning's second model, per-image AugMix."""
    from edgecls.data import Dataset, ImageSplit
    from edgecls.data.per_image import per_image_transform
    from edgecls.training.loop import Trainer

    size, batch = candidate.input_size, candidate.batch_size
    images = torch.randint(0, 256, (batch, channels, size, size), dtype=torch.uint8)
    labels = torch.arange(batch) % max(2, classes)
    split = ImageSplit(images, labels, [""] * batch)
    names = [str(i) for i in range(max(2, classes))]
    dataset = Dataset("planning", names, split, split, None, [], [], False)
    pixels = images.float() / 255

    def step_seconds(**change: Any) -> float:
        trial = dataclasses.replace(config, lr=0.0, schedule="constant", **change)
        trainer = Trainer(trial, dataset)
        batch_pixels = pixels.to(trainer.device).contiguous(memory_format=trainer.memory_format)
        batch_labels = labels.to(trainer.device)
        trainer.step(batch_pixels, batch_labels)  # warm-up
        started = time.perf_counter()
        trainer.step(batch_pixels, batch_labels)
        return time.perf_counter() - started

    plain = step_seconds(sam=False, mutual=False)
    costs = {
        "sam": step_seconds(sam=True, mutual=False) / plain,
        "mutual": step_seconds(sam=False, mutual=True) / plain,
    }
    transform = per_image_transform(size, channels == 1, hflip=config.hflip)
    pictures = [Image.fromarray(i.permute(1, 2, 0).squeeze(-1).numpy()) for i in images[:16]]
    started = time.perf_counter()
    for picture in pictures:
        transform(picture)
    augmix_seconds = (time.perf_counter() - started) / len(pictures) * batch
    if torch.cuda.is_available():  # loader processes work beside the GPU
        costs["augmix"] = max(1.0, augmix_seconds / max(1, config.workers) / plain)
    else:  # they take the cores the training step uses
        costs["augmix"] = 1 + augmix_seconds / plain
    return {name: round(cost, 2) for name, cost in costs.items()}


def measure_latency(candidate: Candidate, channels: int, classes: int) -> None:
    """Batch-1 latency of the candidate exported to ONNX Runtime, as it would be deployed."""
    import tempfile

    import numpy as np

    from edgecls.deploy.bench import time_runs
    from edgecls.deploy.formats import export_onnx
    from edgecls.deploy.runtime import ModelInfo, OnnxPredictor

    config = build_config(
        {"model": candidate.model, "input_size": candidate.input_size, "grayscale": channels == 1}
    )
    model = create_model(config, max(2, classes)).eval()
    info = ModelInfo([str(i) for i in range(max(2, classes))], candidate.input_size, channels == 1)
    with tempfile.TemporaryDirectory() as folder:
        predictor = OnnxPredictor(export_onnx(model, info, Path(folder) / "model.onnx"))
        pixels = np.random.rand(1, channels, candidate.input_size, candidate.input_size)
        candidate.latency_ms = time_runs(lambda: predictor.run(pixels), repeats=20, warmup=3)


# --- choosing ---------------------------------------------------------------------------------


def input_sizes(median_side: int, smallest: int = 32) -> list[int]:
    """The images' own scale rounded up to a multiple of 32 (at most 224), then halved down to
    `smallest`."""
    top = min(224, max(smallest, math.ceil(median_side / 32) * 32))
    sizes = [top]
    while sizes[-1] > smallest:
        sizes.append(max(smallest, (sizes[-1] // 2 + 31) // 32 * 32))
    return sorted(set(sizes), reverse=True)[:3]


def _batch_size(input_size: int) -> int:
    """64 up to 64 px, 32 above, however few the images: batch norm fine-tuned on batches of 16
    reached 62.6% test top-1 on 200 MNIST digits in 2 minutes, on batches of 32 82.6%, of 64
    89.2% (benchmarks/auto_plan.py's mnist5k 200 row, batch_size=N)."""
    return 64 if input_size <= 64 else 32


def candidates_for(profile: DataProfile, user: dict[str, Any]) -> list[Candidate]:
    """Models to measure, each at its input sizes: ImageNet features need at least 64 px (the
    last feature map of a 32 px input is a single pixel); a model from scratch is also measured
    at 32 px, for budgets too short for 64."""

    def sizes(model: str, weights: str) -> list[int]:
        if "input_size" in user:
            return [user["input_size"]]
        if weights != "scratch":
            upscaled = [UPSCALED] if profile.median_side < 64 else []
            return [*upscaled, *input_sizes(profile.median_side, 64)]
        if model in CIFAR_MODELS:
            return [TINY_SIDE]
        # Tiny images also at 64 px, upscaled: the model then keeps a 2x2 last feature map, and
        # trains better per second than at 32 px when the budget gives it enough epochs.
        return sorted({*input_sizes(profile.median_side, 32), 64}, reverse=True)[:3]

    models: list[tuple[str, str]] = []
    pretrained = user.get("pretrained")
    if "model" in user:
        if pretrained and "weights" not in user:
            source = weights_source(user["model"]) or "imagenet: hub"
        else:
            source = "your weights" if "weights" in user else "scratch"
        models.append((user["model"], source))
    else:
        if pretrained is not False:
            models += [(m, s) for m in PRETRAINED_MODELS if (s := weights_source(m))][:2]
        if not pretrained:
            if profile.median_side <= TINY_SIDE:
                models += [(m, "scratch") for m in CIFAR_MODELS]
            models += [(m, "scratch") for m in SCRATCH_MODELS]
    if not models:
        raise UserError(
            "no ImageNet weights are at hand for any candidate model: name one with --model "
            "(weights come from the timm hub) or pass weights=FILE"
        )
    return [
        Candidate(
            model,
            size,
            weights,
            user.get("batch_size") or _batch_size(size),
        )
        for model, weights in models
        for size in sizes(model, weights)
    ]


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
    return "cifar" if candidate.model in CIFAR_MODELS else "scratch"


def _kinds_best_first(profile: DataProfile) -> tuple[str, ...]:
    """ImageNet weights on small data, from scratch on large; for tiny images, a CIFAR ResNet at
    their own scale as soon as there are TINY_SMALL_DATA images to learn from."""
    tiny = profile.median_side <= TINY_SIDE
    if profile.training_images < (TINY_SMALL_DATA if tiny else SMALL_DATA):
        return ("imagenet", "cifar", "scratch")
    return ("cifar", "scratch", "imagenet")


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
    budget = user.get("time_budget")
    max_latency_ms = user.get("max_latency_ms")
    profile = profile_data(spec)
    machine = machine or describe_machine()
    if not profile.training_images:  # nothing to plan for: loading the data names the problem
        return Plan({}, {}, [], profile, machine, None)
    notes: list[str] = []
    if budget is None and machine["device"] == "cpu":
        budget = DEFAULT_CPU_BUDGET
        notes.append(f"no time_budget given on a CPU: {DEFAULT_CPU_BUDGET} applies")
    budget_seconds = parse_duration(budget) if budget is not None else None
    grey = user.get("grayscale", profile.grayscale)
    channels = 1 if grey else 3
    free_bytes = machine["free_memory_bytes"]

    if "model" in user or "weights" in user:  # a wrong name or weights file fails here, first
        create_model(build_config(user, {"input_size": 32}), max(2, profile.classes))
    candidates = candidates_for(profile, user)
    cache = user.get("cache", Config.cache)
    speedups: dict[str, float] = {}  # mixed precision's, per model
    clock_started = started if started is not None else planning_clock

    def judge(candidate: Candidate) -> None:
        """Whether a measured candidate fits memory, the latency limit and the budget."""
        data_bytes = decoded_bytes(profile.images, channels, candidate.input_size)
        if _on_disk(profile, cache, channels, candidate.input_size):
            data_bytes = 0  # read from the disk cache, a batch at a time
        if data_bytes + candidate.memory_bytes > 0.7 * free_bytes:
            candidate.fits, candidate.why_not = False, "needs more memory than is free"
            return
        if max_latency_ms is not None:
            measure_latency(candidate, channels, profile.classes)
            if candidate.latency_ms > max_latency_ms:
                candidate.fits = False
                candidate.why_not = f"{candidate.latency_ms:.1f} ms > max_latency_ms"
                return
        if budget_seconds is None:
            return
        # What is left for training once planning so far, start-up, decoding and the reserve
        # are paid.
        spent = time.monotonic() - clock_started
        decoding = profile.images * profile.decode_seconds_per_image * DECODE_RESERVE
        train_seconds = budget_seconds * (1 - BUDGET_RESERVE) - spent - decoding
        speed = candidate.train_images_per_second  # evaluation runs about 3x faster
        epoch_seconds = (profile.training_images + profile.validation_images / 3) / speed
        test_images = profile.images - profile.training_images - profile.validation_images
        final_seconds = (profile.validation_images + test_images) / 3 / speed
        candidate.epochs = max(0, int((train_seconds - final_seconds) / epoch_seconds))
        # A user's max_epochs below a model's minimum is what they want, not a misfit.
        if candidate.epochs < min(MIN_EPOCHS[_kind(candidate)], user.get("max_epochs", 10**9)):
            candidate.fits = False
            candidate.why_not = f"only {candidate.epochs} epochs fit the budget"
        elif _upscaled(candidate, profile) and candidate.epochs < UPSCALED_MIN_EPOCHS:
            candidate.fits = False
            candidate.why_not = (
                f"upscaled {profile.median_side} px images: {candidate.epochs} epochs fit, "
                f"it needs {UPSCALED_MIN_EPOCHS}"
            )

    # Best first: the first candidate that fits is the one chosen, so on a budget the rest are
    # measured only while planning stays within its share (they fill the table).
    best_first = sorted(
        candidates, key=lambda c: _preference(c, profile, candidates.index(c))[1:], reverse=True
    )
    for candidate in best_first:
        planning = time.perf_counter() - planning_started
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
        measure(candidate, channels, profile.classes, user.get("amp"), speedups)
        judge(candidate)
    short = [c for c in candidates if c.why_not.endswith("fit the budget")]
    if short and not any(c.fits for c in candidates):
        longest = max(short, key=lambda c: c.epochs)
        if longest.epochs >= MIN_SHORT_EPOCHS:  # a short budget: the most epochs it allows
            longest.fits, longest.why_not = True, ""
            notes.append(f"a short budget: {longest.epochs} epochs, fewer than a model wants")
    chosen = max(candidates, key=lambda c: _preference(c, profile, candidates.index(c)))
    if not chosen.fits:
        if max_latency_ms is not None and all(
            c.why_not.endswith("max_latency_ms") for c in candidates
        ):
            fastest = min(c.latency_ms for c in candidates)
            raise UserError(
                f"no candidate model runs within max_latency_ms={max_latency_ms:g} on this "
                f"machine (fastest: {fastest:.1f} ms at batch 1, ONNX Runtime)"
            )
        if budget_seconds is not None and "memory" not in chosen.why_not:
            raise UserError(
                f"a time_budget of {budget} is too small for any model on this data "
                f"({len(candidates)} candidates measured; the fastest would get "
                f"{max(c.epochs for c in candidates)} epochs): give a larger time_budget"
            )
        raise UserError("no candidate model fits this machine's free memory")

    pretrained = chosen.weights != "scratch"
    values: dict[str, Any] = {
        "model": chosen.model,
        "pretrained": pretrained,
        "input_size": chosen.input_size,
        "grayscale": grey,
        "batch_size": chosen.batch_size,
        "augment": "basic",
        "hflip": not grey,
        "lr": 0.01 if pretrained else 0.05,
        "warmup_epochs": 1,
        "amp": chosen.amp,
        "linear_probe": pretrained
        and profile.training_images < LINEAR_PROBE_MAX_IMAGES
        and user.get("head", Config.head) == "linear",
    }
    reasons = {
        "model": f"{chosen.weights}; {chosen.train_images_per_second:.0f} training images/s here",
        "input_size": f"images are about {profile.median_side} px on the shorter side",
        "grayscale": "every sampled image is grey" if grey else "colour images",
    }
    if values["linear_probe"]:
        reasons["linear_probe"] = (
            f"{profile.training_images} training images: the head starts as a logistic "
            "regression on the frozen ImageNet features (LP-FT)"
        )
    if chosen.amp_speedup is not None:
        reasons["amp"] = (
            f"mixed precision trains {chosen.amp_speedup:.1f}x as fast as fp32 here"
            + ("" if chosen.amp else f" (it needs {AMP_MIN_SPEEDUP}x)")
        )
    full_recipe = {
        "sam": True,
        "mutual": "mobilenetv3" in chosen.model,  # the paper pairs its MobileNetV3s
        "augment": "augmix",
        "no_bias_decay": True,
    }
    if budget_seconds is None:
        values.update(full_recipe, lr="tpe")
        reasons["lr"] = "no budget: the paper's full adaptive recipe"
    else:
        values.update(time_budget=budget_seconds, schedule=BUDGET_SCHEDULE, max_epochs=200)
        kind = "scratch" if not pretrained else "imagenet"
        wanted = [name for name in ("sam", "mutual", "augmix") if full_recipe.get(name, True)]
        costs: dict[str, float] = {}
        kept, dropped = [], []
        if profile.training_images < FULL_RECIPE_MIN_IMAGES:  # nothing to measure
            notes.append(
                f"{profile.training_images} training images: too few for the paper's recipe "
                f"(it needs {FULL_RECIPE_MIN_IMAGES})"
            )
        else:
            config = build_config({**user, **values, "lr": 0.01})
            costs = measure_ingredients(chosen, channels, profile.classes, config)
            kept, dropped = affordable_ingredients(
                costs, wanted, chosen.epochs, FULL_RECIPE_EPOCHS[kind]
            )
        values.update(
            sam="sam" in kept,
            mutual="mutual" in kept,
            augment="augmix" if "augmix" in kept else _batch_augment(chosen.epochs),
            no_bias_decay=profile.training_images >= FULL_RECIPE_MIN_IMAGES,
        )
        epochs = chosen.epochs / math.prod(costs[n] for n in kept)
        if values["augment"] == "light":
            reasons["augment"] = "a short run: no rotation or colour jitter, which it underfits"
        if values["augment"] == "augmix" and machine["device"] == "cpu":
            # Loader workers start again every epoch and take the cores training needs: on 160
            # images an epoch took 2.0 s with 2 workers, 0.65 s without (92.6% test top-1 on 200
            # MNIST digits in 2 minutes, against 89.2%).
            values["workers"] = 0
            reasons["workers"] = "AugMix in the training process: workers would share its cores"
        described = ", ".join(f"{INGREDIENTS[n]} x{costs[n]:.1f}" for n in dropped)
        if dropped:
            notes.append(f"dropped for the budget, costliest first: {described}")
        if kept:
            notes.append(
                "kept from the paper's recipe: "
                + ", ".join(f"{INGREDIENTS[n]} x{costs[n]:.1f}" for n in kept)
            )
        search = _lr_search_size(chosen.epochs / (costs["augmix"] if "augmix" in kept else 1))
        if profile.validation_images < LR_SEARCH_MIN_VAL_IMAGES:
            reasons["lr"] = (
                f"fixed: {profile.validation_images} validation images are too few to score "
                f"an LR search on (it needs {LR_SEARCH_MIN_VAL_IMAGES})"
            )
        elif search is not None:
            trials, trial_epochs = search
            values.update(lr="tpe", lr_search_trials=trials, lr_search_epochs=trial_epochs)
            epochs *= 1 - LR_SEARCH_SHARE
            reasons["lr"] = (
                f"TPE search, {trials} trials of {trial_epochs} epochs: about "
                f"{LR_SEARCH_SHARE:.0%} of the budget"
            )
        else:
            reasons["lr"] = (
                f"fixed: an LR search of {LR_SEARCH_MIN_TRIALS} trials of "
                f"{LR_SEARCH_MIN_EPOCHS} epochs would take more than {LR_SEARCH_SHARE:.0%} "
                "of the budget"
            )
        reasons["max_epochs"] = (
            f"about {int(epochs)} epochs fit {budget} at the measured speed; "
            + SCHEDULE_REASONS[BUDGET_SCHEDULE]
        )
        values["warmup_epochs"] = max(1, min(MAX_WARMUP_EPOCHS, round(WARMUP_SHARE * epochs)))
        reasons["warmup_epochs"] = f"{WARMUP_SHARE:.0%} of the epochs, 1 to {MAX_WARMUP_EPOCHS}"
    if not pretrained:
        notes.append(_why_scratch(profile, candidates, user))
    if _on_disk(profile, cache, channels, chosen.input_size):
        size = decoded_bytes(profile.images, channels, chosen.input_size) / 2**30
        notes.append(
            f"images: the disk cache ({size:.1f} GB decoded"
            + (", more than memory holds comfortably)" if cache == "auto" else ", cache=disk)")
        )
    values["eval_batch_size"] = _eval_batch(chosen, free_bytes, machine["device"])
    give_back_freed_memory()
    user_keys = sorted(k for k in user if k in Config.__dataclass_fields__)
    for key in user_keys:
        values.pop(key, None)
        reasons[key] = "yours"
    return Plan(
        values=values,
        reasons=reasons,
        user_keys=user_keys,
        data=profile,
        machine=machine,
        budget_seconds=budget_seconds,
        candidates=candidates,
        notes=notes,
        seconds=round(time.perf_counter() - planning_started, 2),
        chosen=candidates.index(chosen),
    )


def give_back_freed_memory() -> None:
    """The timed steps' activations are freed, but glibc keeps them in its heaps: 0.6 GB that
    stayed resident through a whole 224 px run; malloc_trim hands them back to the system."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def _upscaled(candidate: Candidate, profile: DataProfile) -> bool:
    """An ImageNet model at more than its 64 px minimum, on images smaller than that."""
    return candidate.weights != "scratch" and candidate.input_size > max(
        64, math.ceil(profile.median_side / 32) * 32
    )


def _on_disk(profile: DataProfile, cache: str, channels: int, input_size: int) -> bool:
    """Whether loading will decode into the disk cache, as `cache` and the free memory say."""
    return profile.files and choose_cache(cache, profile.images, channels, input_size) == "disk"


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


def _batch_augment(epochs: int) -> str:
    """A short run underfits under strong augmentation: `light` below LIGHT_AUGMENT_EPOCHS."""
    return "light" if epochs < LIGHT_AUGMENT_EPOCHS else "basic"


def _lr_search_size(epochs: float) -> tuple[int, int] | None:
    """(trials, epochs per trial) of an LR search that takes about LR_SEARCH_SHARE of the
    budget's `epochs`, or None when that share is too small for a useful search."""
    share = LR_SEARCH_SHARE * epochs
    trial_epochs = min(Config.lr_search_epochs, int(share // LR_SEARCH_MIN_TRIALS))
    if trial_epochs < LR_SEARCH_MIN_EPOCHS:
        return None
    return min(Config.lr_search_trials, int(share // trial_epochs)), trial_epochs


def _eval_batch(candidate: Candidate, free_bytes: int, device: str) -> int:
    """Evaluation keeps no activations for backward: a few times the training batch fits. On a
    CPU a batch beyond about EVAL_BATCH_PIXELS runs out of cache and is slower per image."""
    per_image = max(1, candidate.memory_bytes // max(1, candidate.batch_size))
    largest = 256
    if device == "cpu":
        fitting = EVAL_BATCH_PIXELS // candidate.input_size**2
        largest = max(32, min(largest, 2 ** int(math.log2(max(1, fitting)))))
    return int(max(16, min(largest, 0.2 * free_bytes // per_image)))
