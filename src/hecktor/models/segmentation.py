"""Task 1 networks on CT and PET (2 channels) with 3 classes, behind one encoder interface.

* ``dynunet`` (the paper's): MONAI DynUNet, kernels and strides by nnU-Net's planning rule
  (:mod:`hecktor.planning`). Widths double per level up to ``max_filters``.
* ``segresnet``: MONAI SegResNet (residual encoder, light decoder, group norm), four levels.

A network's :class:`Plan` is resolved once, from the config and the prepared grid, saved beside
its weights (checkpoints, bundles) and rebuilt from there, so a trained network never depends on
how a later config would plan it. Every network is a :class:`Segmenter`: Task 3 reads its
bottleneck through :meth:`Segmenter.encode` and :meth:`Segmenter.forward_with_features`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from monai.networks.nets import DynUNet, SegResNet
from torch import nn

from hecktor import planning
from hecktor.errors import UserError

IN_CHANNELS = 2  # CT, PET
CLASSES = 3  # background, GTVp, GTVn
NETWORKS = ("dynunet", "segresnet")
SEGRESNET_BLOCKS_DOWN = (1, 2, 2, 4)  # MONAI's default: four levels, three halvings
SEGRESNET_GROUPS = 8


@dataclass(frozen=True)
class Plan:
    """A Task 1 network's architecture: everything needed to rebuild it, nothing else."""

    network: str
    patch: tuple[int, int, int]  # the training patch (z, y, x), voxels
    kernels: tuple[tuple[int, ...], ...]
    strides: tuple[tuple[int, ...], ...]
    filters: tuple[int, ...]

    @property
    def divisor(self) -> list[int]:
        """What each axis of an input must be divisible by."""
        return planning.divisor(self.strides)

    @property
    def channels(self) -> int:
        """Width of the bottleneck, the features Task 3 classifies."""
        return self.filters[-1]

    def check(self, size: Sequence[int], what: str) -> None:
        """Raise naming ``what`` when ``size`` does not fit the network's downsampling."""
        problem = planning.misfit(size, self.strides, self.network, what)
        if problem:
            raise UserError(problem)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        return cls(
            network=str(data["network"]),
            patch=tuple(int(v) for v in data["patch"]),  # type: ignore[arg-type]
            kernels=tuple(tuple(int(v) for v in k) for k in data["kernels"]),
            strides=tuple(tuple(int(v) for v in s) for s in data["strides"]),
            filters=tuple(int(v) for v in data["filters"]),
        )


def make_plan(
    network: str,
    patch_size: Sequence[int],
    spacing: Sequence[float],
    base_filters: int = 32,
    max_filters: int = 320,
) -> Plan:
    """Plan ``network`` for a patch (voxels) at a spacing (mm); the patch must fit the plan."""
    patch = tuple(int(p) for p in patch_size)
    kernels, strides = planning.kernels_and_strides(network, patch, spacing)
    if network == "dynunet":
        filters = [min(base_filters * 2**i, max_filters) for i in range(len(strides))]
    else:
        if base_filters % SEGRESNET_GROUPS:
            raise UserError(
                f"seg.base_filters {base_filters} must be a multiple of {SEGRESNET_GROUPS} for "
                "segresnet (its group norm)"
            )
        filters = [base_filters * 2**i for i in range(len(strides))]
    out = Plan(
        network,
        patch,  # type: ignore[arg-type]
        tuple(tuple(k) for k in kernels),
        tuple(tuple(s) for s in strides),
        tuple(filters),
    )
    out.check(patch, "seg.patch_size")
    return out


class Segmenter(nn.Module):
    """A segmentation network whose bottleneck features can be read (the HPV head's input)."""

    plan: Plan

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """Bottleneck feature map from the encoder alone (no decoder)."""
        raise NotImplementedError

    def forward_with_features(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Segmentation logits and the bottleneck features of one pass."""
        raise NotImplementedError

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.forward_with_features(image)[0]


class DynUNetSegmenter(Segmenter):
    def __init__(self, plan: Plan) -> None:
        super().__init__()
        self.plan = plan
        self.net = DynUNet(
            spatial_dims=3,
            in_channels=IN_CHANNELS,
            out_channels=CLASSES,
            kernel_size=[list(k) for k in plan.kernels],
            strides=[list(s) for s in plan.strides],
            upsample_kernel_size=[list(s) for s in plan.strides[1:]],
            filters=list(plan.filters),
            norm_name="instance",
            deep_supervision=False,
            res_block=True,
        )
        self._features: torch.Tensor | None = None
        # DynUNet builds its skips recursively: the bottleneck's output is reached by a hook
        self.net.bottleneck.register_forward_hook(self._keep)

    def _keep(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        self._features = output

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        out = self.net.input_block(image)
        for block in self.net.downsamples:
            out = block(out)
        features = self.net.bottleneck(out)
        self._features = None  # the hook fired; nothing to hand on
        return features

    def forward_with_features(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.net(image)
        features, self._features = self._features, None
        assert features is not None, "the bottleneck hook did not fire"
        return logits, features

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        logits = self.net(image)
        self._features = None
        return logits


class SegResNetSegmenter(Segmenter):
    def __init__(self, plan: Plan) -> None:
        super().__init__()
        self.plan = plan
        self.net = SegResNet(
            spatial_dims=3,
            in_channels=IN_CHANNELS,
            out_channels=CLASSES,
            init_filters=plan.filters[0],
            blocks_down=SEGRESNET_BLOCKS_DOWN,
            blocks_up=(1,) * (len(SEGRESNET_BLOCKS_DOWN) - 1),
            num_groups=SEGRESNET_GROUPS,
        )

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        return self.net.encode(image)[0]

    def forward_with_features(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features, skips = self.net.encode(image)
        skips.reverse()
        return self.net.decode(features, skips), features


SEGMENTERS: dict[str, type[Segmenter]] = {
    "dynunet": DynUNetSegmenter,
    "segresnet": SegResNetSegmenter,
}


def build_segmenter(plan: Plan) -> Segmenter:
    """The network a plan describes, freshly initialised."""
    return SEGMENTERS[plan.network](plan)
