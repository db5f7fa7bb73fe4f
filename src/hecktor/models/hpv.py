"""Task 3 network: the Task 1 network with a classification head on its bottleneck and clinical data.

The bottleneck feature map is pooled (global mean and max, so any input size works) and fused with
the clinical variables (:mod:`hecktor.models.fusion`) into the HPV logit.
Training runs the whole network (segmentation keeps the encoder anatomical); inference runs the
encoder alone (:meth:`HPVNet.encode`, then :meth:`HPVNet.logit`), as the paper did once the decoder
was no longer needed.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from hecktor.models.fusion import Fused, Fusion
from hecktor.models.segmentation import Segmenter


class HPVOutput(NamedTuple):
    """The same structure in training and evaluation."""

    segmentation: torch.Tensor  # (B, 3, Z, Y, X) logits
    hpv: torch.Tensor  # (B,) logits


def _pooled(features: torch.Tensor) -> torch.Tensor:
    """Global mean and max of a bottleneck feature map: any input size gives the same width."""
    return torch.cat([features.mean(dim=(2, 3, 4)), features.amax(dim=(2, 3, 4))], dim=1)


class HPVNet(Fused):
    def __init__(self, segmenter: Segmenter, clinical_width: int, mlp_width: int = 32,
                 dropout: float = 0.2, fusion: Fusion = "concat") -> None:  # fmt: skip
        super().__init__()
        self.segmenter = segmenter
        self.build_fusion(fusion, 2 * segmenter.plan.channels, clinical_width, mlp_width, dropout)

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """Bottleneck feature map from the encoder alone (no decoder)."""
        return self.segmenter.encode(image)

    def logit(self, features: torch.Tensor, clinical: torch.Tensor) -> torch.Tensor:
        """HPV logits from bottleneck features and clinical data (features can be reused)."""
        return self.fuse(_pooled(features), clinical)

    def parts(self, features: torch.Tensor, clinical: torch.Tensor) -> dict[str, torch.Tensor]:
        """The logit's clinical and image terms (additive fusion only)."""
        return self.fused_parts(_pooled(features), clinical)

    def forward(self, image: torch.Tensor, clinical: torch.Tensor) -> HPVOutput:
        segmentation, features = self.segmenter.forward_with_features(image)
        return HPVOutput(segmentation, self.logit(features, clinical))
