"""Where and in which precision tensors are computed: the one choice of device (CUDA when there
is a GPU) and of autocast, shared by training, planning and inference."""

from __future__ import annotations

import torch

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
