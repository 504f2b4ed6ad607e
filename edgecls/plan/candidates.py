"""Step 2 of planning: the models and input sizes worth measuring for this data: models of the
paper's family from scratch and the small ImageNet models whose weights are at hand."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from edgecls.errors import UserError
from edgecls.models import packaged_weights
from edgecls.models.cifar_resnet import default_cfgs as cifar_resnets
from edgecls.plan.profile import DataProfile

SCRATCH_MODELS = ("mobilenetv3_small_100", "mobilenetv3_large_100")
CIFAR_MODELS = ("resnet20_cifar",)  # full resolution to the last stage: for tiny images only
PRETRAINED_MODELS = ("mobilenetv2_100", "tf_efficientnet_lite0", "mobilenetv3_large_100")
TINY_SIDE = 32  # images this small (px) are also measured with a CIFAR ResNet at their own scale
# The CIFAR ResNet is measured at the images' own side from OWN_SIDE_MIN px (rounded up to a
# multiple of 4) as well as enlarged to TINY_SIDE, which a long run pays for (plan.choose.
# ENLARGED_CIFAR_MIN_EPOCHS): 28 px trained 24-29% more epochs than 32 on the Fashion-MNIST subset.
# Smaller images, 8 px digits, are only enlarged to TINY_SIDE, where the last stage is 8 x 8.
OWN_SIDE_MIN = 24
# ImageNet features on images smaller than their 64 px minimum are also measured at UPSCALED px
# (when it is chosen: plan.choose.UPSCALED_MIN_EPOCHS).
UPSCALED = 96


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


def is_cifar_resnet(model: str) -> bool:
    """Any of edgecls's CIFAR ResNets, the planned one or a user's deeper or wider choice: each
    is measured at `cifar_input_size` and at 32 px only. A user's ResNet-56 used to count as any
    model from scratch: measured at 64 px too, and planned there for the larger input, at 4x the
    work."""
    return model in cifar_resnets


def cifar_input_size(median_side: int) -> int:
    """The smallest side a CIFAR ResNet trains at: the images' own from OWN_SIDE_MIN px, else
    TINY_SIDE."""
    if median_side < OWN_SIDE_MIN:
        return TINY_SIDE
    return min(TINY_SIDE, math.ceil(median_side / 4) * 4)


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


def input_sizes(median_side: int, smallest: int = 32) -> list[int]:
    """The images' own scale rounded up to a multiple of 32 (at most 224), then halved down to
    `smallest`."""
    top = min(224, max(smallest, math.ceil(median_side / 32) * 32))
    sizes = [top]
    while sizes[-1] > smallest:
        sizes.append(max(smallest, (sizes[-1] // 2 + 31) // 32 * 32))
    return sorted(set(sizes), reverse=True)[:3]


def candidates_for(profile: DataProfile, user: dict[str, Any]) -> list[Candidate]:
    """Models to measure, each at its input sizes (the user's model and input size, if given)."""
    return [
        Candidate(model, size, weights, user.get("batch_size") or _batch_size(size))
        for model, weights in _models(profile, user)
        for size in _sizes(model, weights, profile, user)
    ]


def _models(profile: DataProfile, user: dict[str, Any]) -> list[tuple[str, str]]:
    """(model, where its weights come from): the user's model, else two ImageNet models whose
    weights are at hand and the from-scratch ones (a CIFAR ResNet for tiny images)."""
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
    return models


def _sizes(model: str, weights: str, profile: DataProfile, user: dict[str, Any]) -> list[int]:
    """Input sizes to measure `model` at: ImageNet features need at least 64 px (the last feature
    map of a 32 px input is a single pixel); a model from scratch is also measured at 32 px, for
    budgets too short for 64."""
    if "input_size" in user:
        return [user["input_size"]]
    if weights != "scratch":
        upscaled = [UPSCALED] if profile.median_side < 64 else []
        return [*upscaled, *input_sizes(profile.median_side, 64)]
    if is_cifar_resnet(model):  # also enlarged, for budgets long enough to pay for it
        return sorted({TINY_SIDE, cifar_input_size(profile.median_side)}, reverse=True)
    # Tiny images also at 64 px, upscaled: the model then keeps a 2x2 last feature map, and
    # trains better per second than at 32 px when the budget gives it enough epochs.
    return sorted({*input_sizes(profile.median_side, 32), 64}, reverse=True)[:3]


def _batch_size(input_size: int) -> int:
    """64 up to 64 px, 32 above, however few the images: batch norm fine-tuned on batches of 16
    reached 62.6% test top-1 on 200 MNIST digits in 2 minutes, on batches of 32 82.6%, of 64
    89.2% (`python benchmarks/auto_plan.py --datasets mnist5k --subsets-only
    --options batch_size=N`, its mnist5k 200 row)."""
    return 64 if input_size <= 64 else 32
