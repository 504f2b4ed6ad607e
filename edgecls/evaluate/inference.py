"""Running a model over in-memory images, in batches, without gradients."""

from __future__ import annotations

import torch
from torch import nn

from edgecls.data import to_float
from edgecls.data.cache import note_read
from edgecls.errors import UserError


def mixed_precision(device: torch.device, enabled: bool) -> torch.autocast:
    """Autocast as edgecls trains in it: fp16 on a GPU (with loss scaling), bf16 on a CPU."""
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype, enabled=enabled)


def select_device(name: str = "auto") -> torch.device:
    """`auto` picks CUDA when there is a GPU; asking for CUDA without one is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={name}, but this machine has no usable CUDA GPU: use device=cpu")
    return torch.device(name)


@torch.inference_mode()
def predict_logits(
    model: nn.Module,
    images: torch.Tensor,
    batch_size: int = 256,
    device: torch.device | None = None,
    channels_last: bool = True,
) -> torch.Tensor:
    """Logits (N, C) on the CPU for uint8 images (N, C, H, W)."""
    device = device or next(model.parameters()).device
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    was_training = model.training
    model.eval()
    outputs = []
    for start in range(0, images.shape[0], batch_size):
        pixels = images[start : start + batch_size]
        note_read(pixels, images)
        batch = to_float(pixels).to(device, memory_format=memory_format)
        outputs.append(model(batch).float().cpu())
    model.train(was_training)
    if not outputs:
        return torch.empty(0, 0)
    return torch.cat(outputs)
