"""Device and precision choice shared by every torch model."""

from __future__ import annotations

import torch


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def pick_dtype(device: torch.device, requested: str = "auto") -> torch.dtype:
    """float32 on the CPU; bfloat16 on a GPU that supports it (half the memory traffic, tensor cores)."""
    if requested != "auto":
        return getattr(torch, requested)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def configure_threads(threads: int) -> None:
    """Intra-op threads for CPU inference; 0 keeps torch's default (all cores)."""
    if threads > 0:
        torch.set_num_threads(threads)
