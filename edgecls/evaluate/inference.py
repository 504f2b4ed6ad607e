"""Running a model over in-memory images, in batches, without gradients."""

from __future__ import annotations

import torch
from torch import nn

from edgecls.data import to_float
from edgecls.data.cache import note_read


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
