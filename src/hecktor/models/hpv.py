"""Task 3 network: the Task 1 network with a classification head on its bottleneck and clinical data.

The bottleneck feature map is pooled (global mean and max, so any input size works), concatenated
with a two-layer MLP embedding of the clinical variables, and a wide linear layer gives the HPV logit.
Training runs the whole network (segmentation keeps the encoder anatomical); inference runs the
encoder alone (:meth:`HPVNet.encode`, then :meth:`HPVNet.logit`), as the paper did once the decoder
was no longer needed.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from hecktor.models.segmentation import Segmenter


class HPVOutput(NamedTuple):
    """The same structure in training and evaluation."""

    segmentation: torch.Tensor  # (B, 3, Z, Y, X) logits
    hpv: torch.Tensor  # (B,) logits


class HPVNet(nn.Module):
    def __init__(
        self, segmenter: Segmenter, clinical_width: int, mlp_width: int = 32, dropout: float = 0.2
    ) -> None:
        super().__init__()
        self.segmenter = segmenter
        channels = segmenter.plan.channels
        self.clinical = nn.Sequential(
            nn.Linear(clinical_width, mlp_width),
            nn.ReLU(),
            nn.Linear(mlp_width, mlp_width),
            nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * channels + mlp_width, 1))

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """Bottleneck feature map from the encoder alone (no decoder)."""
        return self.segmenter.encode(image)

    def logit(self, features: torch.Tensor, clinical: torch.Tensor) -> torch.Tensor:
        """HPV logits from bottleneck features and clinical data (features can be reused)."""
        pooled = torch.cat([features.mean(dim=(2, 3, 4)), features.amax(dim=(2, 3, 4))], dim=1)
        fused = torch.cat([pooled.float(), self.clinical(clinical.float())], dim=1)
        return self.head(fused).squeeze(1)

    def forward(self, image: torch.Tensor, clinical: torch.Tensor) -> HPVOutput:
        segmentation, features = self.segmenter.forward_with_features(image)
        return HPVOutput(segmentation, self.logit(features, clinical))
