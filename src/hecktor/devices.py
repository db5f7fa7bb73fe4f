"""Where and in what precision a network runs: the device, and reduced precision where it pays.

Shared by training and inference. Whether reduced precision is also *sound* for a network on this
machine is the training engine's start-up check (:func:`hecktor.training.engine.check_precision`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable

import torch

Autocast = Callable[[], contextlib.AbstractContextManager]


def resolve_device(name: str) -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def cpu_supports_bf16() -> bool:
    """Whether this CPU runs bf16 natively (AVX-512 BF16 or AMX), where autocast pays off."""
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(getattr(torch.cpu, c, lambda: False)() for c in checks)


def precision_for(name: str, device: torch.device) -> str:
    """Resolve ``auto``: bf16 on capable CPUs and GPUs, fp16 AMP on older GPUs, else fp32."""
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_supports_bf16() else "fp32"


def autocast_for(precision: str, device: torch.device) -> Autocast:
    if precision == "fp32":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast(device.type, dtype=dtype)
