"""Optimizers and update strategies: parameter groups with no bias decay, the timm optimizer
factory, SAM, and the plain or two-pass update one training step makes.

SAM (Foret et al., sharpness-aware minimization) is written here because timm has none. One
update takes two forward/backward passes: the first gradient g moves the weights to the nearby
worst point w + e, e = rho * g / ||g|| (adaptive ASAM: e = rho * T^2 g / ||T g||, T = |w|); the
gradient there is then applied to the original weights by the wrapped optimizer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Protocol

import timm.optim
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from edgecls.config import Config
from edgecls.registry import OPTIMIZERS

# Our names -> timm's optimizer factory names (timm's own "sgd" is Nesterov; ours is the paper's
# plain momentum SGD). Adding an optimizer of timm's is one line here.
OPTIMIZERS.register("sgd", "SGD with momentum (paper 000)")("momentum")
OPTIMIZERS.register("nesterov", "SGD with Nesterov momentum (002)")("nesterov")
OPTIMIZERS.register("adam", "Adam (002)")("adam")
OPTIMIZERS.register("adamw", "AdamW, decoupled weight decay (001)")("adamw")
OPTIMIZERS.register("nadam", "Nadam (002)")("nadam")
OPTIMIZERS.register("rmsprop", "RMSProp (002)")("rmsprop")
OPTIMIZERS.register("adadelta", "Adadelta (002)")("adadelta")


def parameter_groups(
    models: Iterable[nn.Module], weight_decay: float, no_bias_decay: bool, bias_lr_factor: float
) -> list[dict]:
    """With no bias decay: biases and normalization weights get no weight decay, and biases get
    `bias_lr_factor` times the LR (paper 000, section 3.2). The schedule scales each group's
    LR through its `lr_scale`."""
    decay, norm, bias = [], [], []
    for model in models:
        for name, param in model.named_parameters():
            if not param.requires_grad:
                continue
            if not no_bias_decay or (param.ndim > 1 and not name.endswith(".bias")):
                decay.append(param)
            elif name.endswith(".bias"):
                bias.append(param)
            else:
                norm.append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay, "lr_scale": 1.0},
        {"params": norm, "weight_decay": 0.0, "lr_scale": 1.0},
        {"params": bias, "weight_decay": 0.0, "lr_scale": bias_lr_factor},
    ]
    return [group for group in groups if group["params"]]


def scaled_lr(config: Config, lr: float, processes: int = 1) -> float:
    """Linear scaling rule (paper 004): LR proportional to the global batch (`batch_size` per
    process), relative to 256."""
    return lr * config.batch_size * processes / 256 if config.lr_batch_scaling else lr


class SAM:
    """Sharpness-aware wrapper around any torch optimizer (shares its parameter groups)."""

    def __init__(self, base: torch.optim.Optimizer, rho: float = 0.05, adaptive: bool = False):
        if rho <= 0:
            raise ValueError(f"SAM rho must be positive, got {rho}")
        self.base = base
        self.rho = rho
        self.adaptive = adaptive
        self._perturbations: dict[torch.Tensor, torch.Tensor] = {}

    @property
    def param_groups(self) -> list[dict]:
        """Always the base optimizer's current groups: `load_state_dict` replaces its list, and a
        copy taken at construction would leave the schedule writing LRs nobody reads."""
        return self.base.param_groups

    def _scaled_grads(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        pairs = []
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    scale = param.detach().abs() if self.adaptive else 1.0
                    pairs.append((param, param.grad * scale))
        return pairs

    @torch.no_grad()
    def perturb(self) -> None:
        """Move to w + e using the current gradients (call after the first backward)."""
        pairs = self._scaled_grads()
        norm = torch.norm(torch.stack([g.norm(2) for _, g in pairs]), 2) if pairs else None
        self._perturbations = {}
        if norm is None or norm == 0:
            return
        for param, scaled in pairs:
            scale = param.detach().abs() if self.adaptive else 1.0
            e = scaled * scale * (self.rho / (norm + 1e-12))
            param.add_(e)
            self._perturbations[param] = e

    @torch.no_grad()
    def restore(self) -> None:
        """Back to w (call after the second backward, before the base step)."""
        for param, e in self._perturbations.items():
            param.sub_(e)
        self._perturbations = {}

    def step(self, closure=None):
        return self.base.step(closure)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return self.base.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.base.load_state_dict(state_dict)


def create_optimizer(models: list[nn.Module], config: Config) -> torch.optim.Optimizer | SAM:
    """The configured optimizer (timm's factory) over every trained model's parameters, wrapped
    by SAM when configured. AdamW's weight decay is decoupled (timm passes it to AdamW as is)."""
    groups = parameter_groups(
        models, config.weight_decay, config.no_bias_decay, config.bias_lr_factor
    )
    base = timm.optim.create_optimizer_v2(
        groups,
        opt=OPTIMIZERS[config.optimizer],
        lr=scaled_lr(config, config.lr),
        momentum=config.momentum,
        weight_decay=config.weight_decay,
    )
    return SAM(base, config.sam_rho, config.sam_adaptive) if config.sam else base


@contextmanager
def frozen_batch_norm(models: Iterable[nn.Module]) -> Iterator[None]:
    """Batch norm keeps using batch statistics but leaves its running statistics untouched."""
    layers = [m for model in models for m in model.modules() if isinstance(m, _BatchNorm)]
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.momentum = 0.0
    try:
        yield
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum


def _grads_finite(optimizer: SAM) -> bool:
    grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    return all(torch.isfinite(g).all() for g in grads)


def sam_update(
    sam: SAM,
    scaler: torch.amp.GradScaler,
    first_loss: torch.Tensor,
    second_loss: Callable[[], torch.Tensor],
    models: list[nn.Module],
) -> bool:
    """One SAM update; False if it was skipped because a gradient was inf/NaN.

    Under mixed precision the first-pass gradients are unscaled by hand before the perturbation
    (its size must not depend on the loss scale); the scaler unscales and checks the second pass
    in its own step. Batch-norm running statistics are updated by the first pass only.
    """
    sam.zero_grad()
    scaler.scale(first_loss).backward()
    if scaler.is_enabled():
        inverse = 1.0 / scaler.get_scale()
        for group in sam.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    param.grad.mul_(inverse)
    if not _grads_finite(sam):
        sam.zero_grad()
        if scaler.is_enabled():
            scaler.update(scaler.get_scale() * scaler.get_backoff_factor())
        return False
    sam.perturb()
    sam.zero_grad()
    with frozen_batch_norm(models):
        scaler.scale(second_loss()).backward()
    sam.restore()
    if not scaler.is_enabled() and not _grads_finite(sam):
        sam.zero_grad()
        return False
    scaler.step(sam.base)
    scaler.update()
    return True


class UpdateStrategy(Protocol):
    """How one batch's loss becomes a parameter update; `recompute` evaluates the loss again at
    the current weights (SAM's second pass)."""

    def __call__(self, loss: torch.Tensor, recompute: Callable[[], torch.Tensor]) -> None: ...


class PlainUpdate:
    def __init__(self, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
        self.optimizer, self.scaler = optimizer, scaler

    def __call__(self, loss: torch.Tensor, recompute: Callable[[], torch.Tensor]) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()


class SAMUpdate:
    """Two passes: ascend to the sharpest nearby weights, descend with the gradient there."""

    def __init__(self, sam: SAM, scaler: torch.amp.GradScaler, models: list[nn.Module]) -> None:
        self.sam, self.scaler, self.models = sam, scaler, models

    def __call__(self, loss: torch.Tensor, recompute: Callable[[], torch.Tensor]) -> None:
        sam_update(self.sam, self.scaler, loss, recompute, self.models)


def create_update(
    optimizer: torch.optim.Optimizer | SAM, scaler: torch.amp.GradScaler, models: list[nn.Module]
) -> UpdateStrategy:
    if isinstance(optimizer, SAM):
        return SAMUpdate(optimizer, scaler, models)
    return PlainUpdate(optimizer, scaler)
