"""`edgecls eval RUN DATA --corruptions`: top-1 under common corruptions at five severities, the
mean corruption error (mCE), and the flip rate on perturbation sequences (mFR), after Hendrycks &
Dietterich (2019), as paper 003 reports them.

No maintained corruption package installs offline with current numpy (imagecorruptions was last
released in 2020), so the standard formulas are written here, with CIFAR-10-C's constants (for
32 px) and blur radii scaled by the input size / 32:
- noise: gaussian, shot (Poisson), impulse (salt and pepper);
- blur: gaussian, defocus (a disk);
- weather-like: fog (a smooth random field), brightness;
- digital: contrast, pixelate, JPEG.
mCE: for each corruption, the model's errors summed over the severities divided by the reference
model's (`--reference RUN`), averaged; without a reference, the plain mean error. mFR: the share
of consecutive frames whose top-1 prediction changes, on sequences of gaussian noise (each frame
fresh noise), translation (a pixel more shift per frame) and brightness (a rising ramp),
divided by the reference's when given.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms.v2 import functional as TF

SEVERITIES = 5
FRAMES = 10

Corruption = Callable[[torch.Tensor, int, torch.Generator], torch.Tensor]


def _gaussian_noise(x, s, g):
    sigma = (0.04, 0.06, 0.08, 0.09, 0.10)[s - 1]
    return x + torch.randn(x.shape, generator=g) * sigma


def _shot_noise(x, s, g):
    rate = (500, 250, 100, 75, 50)[s - 1]
    return torch.poisson(x * rate, generator=g) / rate


def _impulse_noise(x, s, g):
    amount = (0.01, 0.02, 0.03, 0.05, 0.07)[s - 1]
    draw = torch.rand(x.shape, generator=g)
    x = x.clone()
    x[draw < amount / 2] = 0.0
    x[draw > 1 - amount / 2] = 1.0
    return x


def _scale(x: torch.Tensor) -> float:
    return x.shape[-1] / 32


def _gaussian_blur(x, s, g):
    sigma = (0.4, 0.6, 0.7, 0.8, 1.0)[s - 1] * _scale(x)
    kernel = 2 * math.ceil(3 * sigma) + 1
    return TF.gaussian_blur(x, [kernel, kernel], [sigma, sigma])


def _defocus_blur(x, s, g):
    """A disk of the given radius, its edge softened by a small gaussian (the "alias blur")."""
    radius, alias = ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1.0, 0.2), (1.5, 0.1))[s - 1]
    radius *= _scale(x)
    size = 2 * math.ceil(radius) + 3
    grid = torch.arange(size) - size // 2
    disk = ((grid[:, None] ** 2 + grid[None, :] ** 2) <= radius**2).float()[None]
    disk = TF.gaussian_blur(disk, [size, size], [alias * _scale(x) * 2.5] * 2)[0]
    disk = (disk / disk.sum()).expand(x.shape[1], 1, size, size)
    padded = F.pad(x, [size // 2] * 4, mode="reflect")
    return F.conv2d(padded, disk, groups=x.shape[1])


def _fog(x, s, g):
    strength, smooth = ((0.2, 3), (0.5, 3), (0.75, 2.5), (1.0, 2.0), (1.5, 1.75))[s - 1]
    coarse = max(2, round(x.shape[-1] / (4 * smooth)))
    field = torch.rand((x.shape[0], 1, coarse, coarse), generator=g)
    field = F.interpolate(field, size=x.shape[-2:], mode="bicubic", align_corners=False)
    top = x.amax(dim=(1, 2, 3), keepdim=True)
    return (x + strength * field) * top / (top + strength)


def _brightness(x, s, g):
    return x + (0.05, 0.1, 0.15, 0.2, 0.3)[s - 1]


def _contrast(x, s, g):
    factor = (0.75, 0.5, 0.4, 0.3, 0.15)[s - 1]
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * factor + mean


def _pixelate(x, s, g):
    share = (0.95, 0.9, 0.85, 0.75, 0.65)[s - 1]
    small = max(1, round(x.shape[-1] * share))
    down = F.interpolate(x, size=(small, small), mode="area")
    return F.interpolate(down, size=x.shape[-2:], mode="nearest")


def _jpeg(x, s, g):
    quality = (80, 65, 58, 50, 40)[s - 1]
    pixels = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    out = []
    for image in pixels:
        buffer = io.BytesIO()
        TF.to_pil_image(image).save(buffer, format="JPEG", quality=quality)
        out.append(TF.pil_to_tensor(Image.open(io.BytesIO(buffer.getvalue()))))
    return torch.stack(out).float() / 255


CORRUPTIONS: dict[str, tuple[str, Corruption]] = {
    "gaussian_noise": ("noise", _gaussian_noise),
    "shot_noise": ("noise", _shot_noise),
    "impulse_noise": ("noise", _impulse_noise),
    "gaussian_blur": ("blur", _gaussian_blur),
    "defocus_blur": ("blur", _defocus_blur),
    "fog": ("weather", _fog),
    "brightness": ("weather", _brightness),
    "contrast": ("digital", _contrast),
    "pixelate": ("digital", _pixelate),
    "jpeg": ("digital", _jpeg),
}


def corrupt(images: torch.Tensor, name: str, severity: int, seed: int = 0) -> torch.Tensor:
    """uint8 (N, C, S, S) images with corruption `name` at `severity` (1-5), as uint8."""
    generator = torch.Generator().manual_seed(seed * 1000 + severity)
    corrupted = CORRUPTIONS[name][1](images.float() / 255, severity, generator)
    return (corrupted.clamp(0, 1) * 255).round().to(torch.uint8)


def _sequences(images: torch.Tensor, seed: int) -> dict[str, list[torch.Tensor]]:
    """Perturbation sequences of FRAMES frames each (uint8), ImageNet-P style."""
    generator = torch.Generator().manual_seed(seed)
    x = images.float() / 255
    noise = [x + torch.randn(x.shape, generator=generator) * 0.03 for _ in range(FRAMES)]
    translate = [torch.roll(x, shifts=(k, k), dims=(2, 3)) for k in range(FRAMES)]
    brightness = [x + 0.02 * k for k in range(FRAMES)]
    as_uint8 = lambda frames: [(f.clamp(0, 1) * 255).round().to(torch.uint8) for f in frames]  # noqa: E731
    return {
        "gaussian_noise": as_uint8(noise),
        "translate": as_uint8(translate),
        "brightness": as_uint8(brightness),
    }


Predict = Callable[[torch.Tensor], torch.Tensor]  # uint8 images -> predicted class indices


def corruption_top1(predict: Predict, images: torch.Tensor, labels: torch.Tensor, seed: int = 0):
    """{corruption: [top-1 at severities 1..5]} and the clean top-1."""
    clean = float((predict(images) == labels).float().mean())
    table = {
        name: [
            float((predict(corrupt(images, name, s, seed)) == labels).float().mean())
            for s in range(1, SEVERITIES + 1)
        ]
        for name in CORRUPTIONS
    }
    return table, clean


def flip_rates(predict: Predict, images: torch.Tensor, seed: int = 0) -> dict[str, float]:
    """Per sequence kind, the share of consecutive frames whose prediction differs."""
    rates = {}
    for name, frames in _sequences(images, seed).items():
        predictions = torch.stack([predict(frame) for frame in frames])  # (FRAMES, N)
        rates[name] = float((predictions[1:] != predictions[:-1]).float().mean())
    return rates


def robustness_report(
    predict: Predict,
    images: torch.Tensor,
    labels: torch.Tensor,
    reference: Predict | None = None,
    reference_name: str | None = None,
    seed: int = 0,
) -> dict:
    """Everything `--corruptions` saves as robustness.json."""
    table, clean = corruption_top1(predict, images, labels, seed)
    flips = flip_rates(predict, images, seed)
    errors = {name: sum(1 - t for t in top1) for name, top1 in table.items()}
    result = {
        "images": len(labels),
        "clean_top1": clean,
        "corruptions": {
            name: {"family": CORRUPTIONS[name][0], "top1": top1, "mean_top1": sum(top1) / len(top1)}
            for name, top1 in table.items()
        },
        "flip_rates": flips,
        "reference": reference_name,
    }
    if reference is not None:
        reference_table, reference_clean = corruption_top1(reference, images, labels, seed)
        reference_errors = {n: sum(1 - t for t in top1) for n, top1 in reference_table.items()}
        reference_flips = flip_rates(reference, images, seed)
        result.update(
            mce=_mean_ratio(errors, reference_errors),
            mfr=_mean_ratio(flips, reference_flips),
            reference_clean_top1=reference_clean,
        )
        result["summary"] = (
            f"mCE {100 * result['mce']:.1f}% and mFR {100 * result['mfr']:.1f}% relative to "
            f"{reference_name} (100% = as robust as it); clean top-1 {100 * clean:.2f}% "
            f"(reference {100 * reference_clean:.2f}%), {len(labels)} images."
        )
    else:
        mean_error = sum(errors.values()) / (len(errors) * SEVERITIES)
        result.update(mce=None, mfr=None, mean_corruption_error=mean_error)
        result["summary"] = (
            f"mean corruption error {100 * mean_error:.1f}% (unnormalised: pass --reference RUN "
            f"for mCE and mFR relative to another model), mean flip rate "
            f"{100 * sum(flips.values()) / len(flips):.1f}%; clean top-1 {100 * clean:.2f}%, "
            f"{len(labels)} images."
        )
    return result


def _mean_ratio(model: dict[str, float], reference: dict[str, float]) -> float:
    """The mean of model / reference over the corruptions; where the reference makes no errors
    (or flips), equal counts as 1 and any other as that corruption left out."""
    ratios = [
        model[n] / reference[n] if reference[n] > 0 else 1.0
        for n in model
        if reference[n] > 0 or model[n] == 0
    ]
    return sum(ratios) / len(ratios) if ratios else 1.0
