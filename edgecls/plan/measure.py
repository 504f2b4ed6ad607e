"""Step 3 of planning: what this machine does with each candidate, timed here, not assumed:
training steps (fp32 and mixed precision), the recipe's ingredients, ONNX latency, decoding."""

from __future__ import annotations

import ctypes
import dataclasses
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import psutil
import torch
from PIL import Image

from edgecls.config import Config, build_config
from edgecls.models import create_model

if TYPE_CHECKING:
    from edgecls.plan.candidates import Candidate

# Reading and resizing one image file: timed on DECODE_SAMPLE of the files, in one thread.
DECODE_SAMPLE = 24
# Timed training steps per candidate, after one untimed: at least MEASURE_STEPS[0], on until
# MEASURE_SECONDS (at most MEASURE_STEPS[1]); their median. A couple of steps on a shared machine
# vary from one run to the next. A step of LONG_STEP_SECONDS or more is timed once: it averages
# thousands of kernels already, and MobileNetV3-large's step at 224 px, batch 128, takes 6 s on
# 2 cores (4 such steps were 24.6 s of planning in benchmarks/results/ceiling.md).
MEASURE_STEPS, MEASURE_SECONDS = (2, 8), 0.6
LONG_STEP_SECONDS = 2.0
# Where the hardware has it (a GPU, a CPU with AVX-512 BF16 or AMX), each candidate is also timed
# in mixed precision, kept when at least this much faster: on a 2-core AMX CPU bf16 trained the
# ResNets 1.8-2.3x faster and the depthwise MobileNetV3s 0.6-0.7x (python benchmarks/amp_speed.py).
AMP_MIN_SPEEDUP = 1.15


def describe_machine() -> dict[str, Any]:
    """The device, the cores this process may use and the free memory: what the plan fits."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    machine = {
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "cores": cores,
        "free_memory_bytes": psutil.virtual_memory().available,
    }
    if machine["device"] == "cuda":
        machine["gpu"] = torch.cuda.get_device_name(0)
    return machine


def fast_mixed_precision(device: str) -> bool:
    """Whether autocast has hardware under it: any CUDA GPU, a CPU with AVX-512 BF16 or AMX."""
    if device == "cuda":
        return True
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, check, lambda: False)() for check in checks)


def decode_seconds(files: list[Path], input_size: int) -> float:
    """Seconds to decode one of `files` as loading will, timed on a spread sample."""
    from edgecls.data.loader import decode_file

    sample = files[:: max(1, len(files) // DECODE_SAMPLE)][:DECODE_SAMPLE]
    started = time.perf_counter()
    for file in sample:
        decode_file(file, input_size=input_size, grayscale=False, boxes={})
    return (time.perf_counter() - started) / max(1, len(sample))


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
    sizes (a bf16 step of a large model at 224 px takes seconds)."""
    from edgecls.device import select_device

    device = select_device()
    model, train_step = _training_step(candidate, channels, classes, device)
    saved = []

    def keep_size(tensor: torch.Tensor) -> torch.Tensor:
        saved.append(tensor.numel() * tensor.element_size())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(keep_size, lambda tensor: tensor):
        train_step(bool(amp))  # the activations one batch keeps for backward; the warm-up too
    activations = sum(saved)
    seconds = _step_seconds(train_step, bool(amp), MEASURE_STEPS[0])
    candidate.amp = bool(amp)
    if amp is None and fast_mixed_precision(device.type):
        speedups = {} if speedups is None else speedups
        if candidate.model not in speedups:  # one step decides: the gaps are wide
            train_step(True)  # warm-up: other kernels
            speedups[candidate.model] = round(seconds / _step_seconds(train_step, True, 1), 2)
        candidate.amp_speedup = speedups[candidate.model]
        if candidate.amp_speedup >= AMP_MIN_SPEEDUP:
            candidate.amp, seconds = True, seconds / candidate.amp_speedup
    candidate.train_images_per_second = candidate.batch_size / seconds
    candidate.parameters = sum(p.numel() for p in model.parameters())
    # weights, gradients, momentum and a copy, 4 bytes each
    candidate.memory_bytes = activations + 4 * 4 * candidate.parameters


def _training_step(
    candidate: Candidate, channels: int, classes: int, device: torch.device
) -> tuple[torch.nn.Module, Callable[[bool], None]]:
    """The candidate's model on `device`, and one SGD step of it on a random batch (in mixed
    precision or not), as training will take it: channels-last, synchronised on a GPU."""
    from edgecls.device import mixed_precision

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

    def train_step(mixed: bool) -> None:
        with mixed_precision(device, mixed):
            loss = torch.nn.functional.cross_entropy(model(batch), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    return model, train_step


def _step_seconds(train_step: Callable[[bool], None], mixed: bool, least: int) -> float:
    """The median of at least `least` timed steps of a warmed-up `train_step`, on until
    MEASURE_SECONDS (at most MEASURE_STEPS[1] steps); one when it takes LONG_STEP_SECONDS."""
    steps: list[float] = []
    while len(steps) < MEASURE_STEPS[1] and (len(steps) < least or sum(steps) < MEASURE_SECONDS):
        if steps and steps[0] >= LONG_STEP_SECONDS:
            break
        started = time.perf_counter()
        train_step(mixed)
        steps.append(time.perf_counter() - started)
    return float(np.median(steps))


def retime(candidate: Candidate, channels: int, classes: int, seconds: float) -> None:
    """The chosen candidate's training speed again, averaged over `seconds` of steps in place of
    its first short sample: the epochs that fit the budget, and the rules that count them (flips,
    augmentation, random erasing), follow this figure, and a few steps time only a moment of a
    shared machine whose speed drifts (benchmarks/planning_speed.py)."""
    from edgecls.device import select_device

    _, train_step = _training_step(candidate, channels, classes, select_device())
    train_step(candidate.amp)  # warm-up: a fresh model's first step allocates
    step_seconds = _mean_step_seconds(train_step, candidate.amp, seconds)
    candidate.train_images_per_second = candidate.batch_size / step_seconds


def _mean_step_seconds(train_step: Callable[[bool], None], mixed: bool, seconds: float) -> float:
    """The mean time of the steps of a warmed-up `train_step` that fill `seconds` (one at least):
    over a window, not a median of a few, as a budget's epochs will average it."""
    steps, started = 0, time.perf_counter()
    while not steps or time.perf_counter() - started < seconds:
        train_step(mixed)
        steps += 1
    return (time.perf_counter() - started) / steps


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


def give_back_freed_memory() -> None:
    """The timed steps' activations are freed, but glibc keeps them in its heaps, resident
    through the whole run that follows; malloc_trim hands them back to the system."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass
