"""Task 1 network: MONAI DynUNet on CT and PET (2 channels) with 3 classes.

Kernels and strides follow the nnU-Net planning rule that DynUNet was made for: an axis is halved
while its feature map stays at least 8 voxels and its spacing at most twice the finest; kernels are
3 on axes within that ratio, 1 on much coarser ones.
"""

from __future__ import annotations

from collections.abc import Sequence

from monai.networks.nets import DynUNet

IN_CHANNELS = 2  # CT, PET
CLASSES = 3  # background, GTVp, GTVn


def plan(
    patch_size: Sequence[int], spacing: Sequence[float], max_levels: int = 6
) -> tuple[list[list[int]], list[list[int]]]:
    """Kernels and strides per level for a patch (voxels) at a spacing (mm), both in (z, y, x)."""
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


def divisor(strides: Sequence[Sequence[int]]) -> list[int]:
    """What each axis of an input must be divisible by."""
    out = [1, 1, 1]
    for stride in strides:
        out = [o * s for o, s in zip(out, stride, strict=True)]
    return out


def build_dynunet(
    patch_size: Sequence[int],
    spacing: Sequence[float],
    base_filters: int = 32,
    max_filters: int = 320,
    in_channels: int = IN_CHANNELS,
    out_channels: int = CLASSES,
) -> DynUNet:
    """A DynUNet planned for the patch and spacing; widths double per level up to ``max_filters``."""
    kernels, strides = plan(patch_size, spacing)
    need = divisor(strides)
    bad = [p for p, d in zip(patch_size, need, strict=True) if p % d]
    if bad:
        raise ValueError(f"seg.patch_size {tuple(patch_size)} must be divisible by {tuple(need)}")
    filters = [min(base_filters * 2**i, max_filters) for i in range(len(strides))]
    return DynUNet(
        spatial_dims=3,
        in_channels=in_channels,
        out_channels=out_channels,
        kernel_size=kernels,
        strides=strides,
        upsample_kernel_size=strides[1:],
        filters=filters,
        norm_name="instance",
        deep_supervision=False,
        res_block=True,
    )
