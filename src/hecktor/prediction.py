"""A patient's prediction as pure steps on arrays: segment (Task 1; then remove small lesions,
:mod:`hecktor.lesions`), HPV logit (Task 3), survival risk (Task 2). Training validates, scoring scores and ``predict`` predicts
through these same functions; none of them reads or writes a file.

Sliding window as in the official HECKTOR baseline: patch-sized windows, overlap 0.5, Gaussian
blending with sigma 0.125 of the window.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from torch import nn

from hecktor.labels import GTVN, GTVP


def segment_probabilities(
    model: nn.Module,
    image: np.ndarray | torch.Tensor,
    patch_size: Sequence[int],
    overlap: float = 0.5,
    sw_batch_size: int = 2,
    device: torch.device | str = "cpu",
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> torch.Tensor:
    """Softmax probabilities (classes, Z, Y, X), float32 on the CPU, for one (C, Z, Y, X) image."""
    x = torch.as_tensor(np.array(image, dtype=np.float32))[None].to(device)
    with torch.inference_mode(), autocast():
        logits = sliding_window_inference(
            x,
            list(patch_size),
            sw_batch_size,
            model,
            overlap=overlap,
            mode="gaussian",
            sigma_scale=0.125,
        )
    return torch.softmax(logits.float(), dim=1)[0].cpu()


def segment(model: nn.Module, image, patch_size, **kwargs) -> np.ndarray:
    """Label map (Z, Y, X) uint8: argmax of :func:`segment_probabilities`."""
    return (
        segment_probabilities(model, image, patch_size, **kwargs).argmax(0).numpy().astype(np.uint8)
    )


def hpv_features(
    model: nn.Module,
    image: np.ndarray | torch.Tensor,
    device: torch.device | str = "cpu",
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> torch.Tensor:
    """Bottleneck features of a whole prepared (2, Z, Y, X) volume: the HPV network's encoder
    alone (the features do not depend on clinical data, so they can be kept and reused)."""
    x = torch.as_tensor(np.array(image, dtype=np.float32))[None].to(device)
    with torch.inference_mode(), autocast():
        return model.encode(x)


def hpv_logit(
    model: nn.Module,
    features: torch.Tensor,
    clinical: np.ndarray,
    device: torch.device | str = "cpu",
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> float:
    """The HPV logit of one patient from its features and encoded clinical vector (> 0: positive)."""
    vector = torch.as_tensor(np.asarray(clinical, dtype=np.float32))[None].to(device)
    with torch.inference_mode(), autocast():
        return float(model.logit(features, vector).float().item())


def survival_input(image: np.ndarray, mask: np.ndarray, pool: int = 1) -> np.ndarray:
    """Task 2's (4, Z, Y, X) float32 input: CT, PET, the GTVp mask and the GTVn mask, each
    averaged over ``pool``^3 blocks (a coarser grid; a lesion smaller than a block stays as a
    fraction; the last part-blocks of each axis are left out), the averages rounded to float16
    as the prepared images are (so that an input kept in float16 is the input computed)."""
    mask = np.asarray(mask)
    out = np.empty((4, *mask.shape), np.float32)
    out[:2] = image
    out[2] = mask == GTVP
    out[3] = mask == GTVN
    if pool == 1:
        return out
    pooled = nn.functional.avg_pool3d(torch.from_numpy(out)[None], pool)[0].numpy()
    return pooled.astype(np.float16).astype(np.float32)


def rfs_risk(
    model: nn.Module,
    inputs: np.ndarray | torch.Tensor,
    clinical: np.ndarray,
    device: torch.device | str = "cpu",
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> float:
    """One patient's predicted log-hazard (higher: earlier relapse) from its survival input."""
    x = torch.as_tensor(np.asarray(inputs, dtype=np.float32))[None].to(device)
    vector = torch.as_tensor(np.asarray(clinical, dtype=np.float32))[None].to(device)
    with torch.inference_mode(), autocast():
        return float(model(x, vector).float().item())
