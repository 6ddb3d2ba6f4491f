"""Device and precision choice shared by every torch model."""

from __future__ import annotations

import os

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


def cores_beside_the_event_loop() -> int:
    """Intra-op threads for a model whose every step sends messages: all cores but the event loop's.

    A token stream keeps the engine thread and the event loop busy at the same time; an intra-op
    pool over every core then waits, on every operation, for the thread the event loop displaced.
    """
    return max(1, (os.cpu_count() or 1) - 1)


def configure_threads(threads: int, instances: int = 1) -> int:
    """Intra-op threads for CPU inference; 0 shares the cores among the model instances. Returns the count."""
    count = threads if threads > 0 else max(1, (os.cpu_count() or 1) // instances)
    torch.set_num_threads(count)
    return count
