"""The CIFAR ResNets of He et al. (2016, section 4.2), registered with timm.

ImageNet models shrink their input 4x in the stem, which leaves a 32 px image a 1-pixel feature
map; these keep full resolution in a 3x3 stem and downsample twice, in three stages of
`(depth - 2) / 6` basic blocks (16, 32, 64 channels at width 1). Paper 002 trains ResNet-56 on
CIFAR-100; edgecls also plans with them for small images trained from scratch. Registering them
with timm makes `--model resnet56_cifar` work everywhere a timm name does, export included.
"""

from __future__ import annotations

from typing import Any

import torch
from timm.layers import DropPath
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

__all__ = ["CifarResNet"]


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, channels: int, stride: int, drop_path: float) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.act = nn.ReLU(inplace=True)
        self.drop_path = DropPath(drop_path) if drop_path else nn.Identity()
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or in_channels != channels:  # projection shortcut (option B)
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride, bias=False), nn.BatchNorm2d(channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act(self.drop_path(out) + self.downsample(x))


class CifarResNet(nn.Module):
    def __init__(
        self,
        depth: int = 56,
        width: int = 16,
        num_classes: int = 100,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        zero_init_last: bool = True,
        **_: Any,
    ) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"a CIFAR ResNet's depth is 6n + 2, not {depth}")
        blocks = (depth - 2) // 6
        self.num_classes, self.drop_rate = num_classes, drop_rate
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, width, 3, 1, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )
        # Deeper blocks drop more; on the CPU also when the model is built on the meta device.
        rates = torch.linspace(0, drop_path_rate, 3 * blocks, device="cpu").tolist()
        layers, channels = [], width
        for stage in range(3):
            out = width * 2**stage
            for index in range(blocks):
                stride = 2 if stage and not index else 1
                layers.append(BasicBlock(channels, out, stride, rates[stage * blocks + index]))
                channels = out
        self.stages = nn.Sequential(*layers)
        self.num_features = channels
        # timm's description of the stage outputs (the last block of each stage), as its own
        # models have it: what feature extraction and the choice of a Grad-CAM layer read.
        self.feature_info = [
            {"num_chs": width * 2**stage, "reduction": 2**stage, "module": f"stages.{last}"}
            for stage, last in enumerate(range(blocks - 1, 3 * blocks, blocks))
        ]
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes) if num_classes else nn.Identity()
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        if zero_init_last:  # each block starts as the identity (zero-gamma, paper 004)
            for module in self.modules():
                if isinstance(module, BasicBlock):
                    nn.init.zeros_(module.bn2.weight)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.pool(x).flatten(1)
        if self.drop_rate:
            x = nn.functional.dropout(x, self.drop_rate, self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _cfg() -> dict[str, Any]:
    return {
        "num_classes": 100,
        "input_size": (3, 32, 32),
        "pool_size": (8, 8),
        "mean": (0.5071, 0.4865, 0.4409),  # CIFAR-100's training set
        "std": (0.2673, 0.2564, 0.2762),
        "first_conv": "stem.0",
        "classifier": "fc",
    }


default_cfgs = generate_default_cfgs(
    {"resnet20_cifar": _cfg(), "resnet56_cifar": _cfg(), "resnet20_cifar_w2": _cfg()}
)


def _create(name: str, pretrained: bool, **kwargs: Any) -> CifarResNet:
    return build_model_with_cfg(CifarResNet, name, pretrained, **kwargs)


@register_model
def resnet20_cifar(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-20 for 32x32 inputs: 3 stages of 3 basic blocks, 0.27 M parameters."""
    return _create("resnet20_cifar", pretrained, depth=20, **kwargs)


@register_model
def resnet20_cifar_w2(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-20 at twice the width (32, 64, 128 channels): 1.1 M parameters."""
    return _create("resnet20_cifar_w2", pretrained, depth=20, width=32, **kwargs)


@register_model
def resnet56_cifar(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-56 of paper 002: 3 stages of 9 basic blocks, 0.86 M parameters."""
    return _create("resnet56_cifar", pretrained, depth=56, **kwargs)
