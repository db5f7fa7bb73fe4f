"""How a Task 1 network downsamples, in plain numbers: kernels, strides, and what an input's size
must be divisible by. Below the config, so that a params file whose patch or crop cannot fit the
network fails when it is read, naming the key, and the networks are built by the same rule.

* ``dynunet``: the nnU-Net planning rule DynUNet was made for: an axis is halved while its
  feature map stays at least 8 voxels and its spacing at most twice the finest; kernels are 3 on
  axes within that ratio, 1 on much coarser ones.
* ``segresnet``: four levels, three halvings on every axis.
"""

from __future__ import annotations

from collections.abc import Sequence

from hecktor.errors import UserError

SEGRESNET_LEVELS = 4


def within(size: Sequence[int], shape: Sequence[int]) -> tuple[int, ...]:
    """A patch size clipped to the volume it is cut from (a patch is never larger)."""
    return tuple(min(int(p), int(s)) for p, s in zip(size, shape, strict=True))


def dynunet_plan(
    patch_size: Sequence[int], spacing: Sequence[float], max_levels: int = 6
) -> tuple[list[list[int]], list[list[int]]]:
    """DynUNet kernels and strides per level for a patch (voxels) at a spacing (mm), (z, y, x)."""
    sizes = [int(s) for s in patch_size]
    spacings = [float(s) for s in spacing]
    kernels: list[list[int]] = []
    strides: list[list[int]] = [[1, 1, 1]]
    while True:
        finest = min(spacings)
        within = [s <= 2 * finest for s in spacings]
        kernels.append([3 if w else 1 for w in within])
        stride = [2 if w and size >= 8 else 1 for w, size in zip(within, sizes, strict=True)]
        if all(s == 1 for s in stride) or len(strides) > max_levels:
            break
        strides.append(stride)
        sizes = [size // s for size, s in zip(sizes, stride, strict=True)]
        spacings = [sp * s for sp, s in zip(spacings, stride, strict=True)]
    return kernels[: len(strides)], strides


def segresnet_plan() -> tuple[list[list[int]], list[list[int]]]:
    return [[3, 3, 3]] * SEGRESNET_LEVELS, [[1, 1, 1]] + [[2, 2, 2]] * (SEGRESNET_LEVELS - 1)


def kernels_and_strides(
    network: str, patch_size: Sequence[int], spacing: Sequence[float]
) -> tuple[list[list[int]], list[list[int]]]:
    if network == "dynunet":
        return dynunet_plan(patch_size, spacing)
    if network == "segresnet":
        return segresnet_plan()
    raise UserError(f"seg.network {network!r}: expected dynunet or segresnet")


def divisor(strides: Sequence[Sequence[int]]) -> list[int]:
    """What each axis of an input must be divisible by."""
    out = [1, 1, 1]
    for stride in strides:
        out = [o * s for o, s in zip(out, stride, strict=True)]
    return out


def misfit(size: Sequence[int], strides: Sequence[Sequence[int]], network: str, what: str) -> str:
    """Why ``size`` does not fit the downsampling (naming ``what``), or "" when it does."""
    need = divisor(strides)
    if any(int(s) % d for s, d in zip(size, need, strict=True)):
        return (f"{what} {tuple(int(s) for s in size)} must be divisible by {tuple(need)} "
                f"(the {network} plan's downsampling)")  # fmt: skip
    return ""
