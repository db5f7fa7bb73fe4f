"""Task 3 network: the Task 1 DynUNet with a classification head on its bottleneck and clinical data.

The bottleneck feature map is pooled (global mean and max, so any input size works), concatenated
with a two-layer MLP embedding of the clinical variables, and a wide linear layer gives the HPV logit.
Training runs the whole network (segmentation keeps the encoder anatomical); inference runs the
encoder alone (:meth:`HPVNet.encode`, then :meth:`HPVNet.logit`), as the paper did once the decoder
was no longer needed.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from monai.networks.nets import DynUNet
from torch import nn


class HPVOutput(NamedTuple):
    """The same structure in training and evaluation."""

    segmentation: torch.Tensor  # (B, 3, Z, Y, X) logits
    hpv: torch.Tensor  # (B,) logits


class HPVNet(nn.Module):
    def __init__(
        self, unet: DynUNet, clinical_width: int, mlp_width: int = 32, dropout: float = 0.2
    ) -> None:
        super().__init__()
        self.unet = unet
        channels = unet.filters[-1]
        self.clinical = nn.Sequential(
            nn.Linear(clinical_width, mlp_width),
            nn.ReLU(),
            nn.Linear(mlp_width, mlp_width),
            nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * channels + mlp_width, 1))
        self._features: torch.Tensor | None = None
        unet.bottleneck.register_forward_hook(self._keep)

    def _keep(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        self._features = output

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """Bottleneck feature map from the encoder alone (no decoder)."""
        out = self.unet.input_block(image)
        for block in self.unet.downsamples:
            out = block(out)
        features = self.unet.bottleneck(out)
        self._features = None  # the hook fired; nothing to hand to forward()
        return features

    def logit(self, features: torch.Tensor, clinical: torch.Tensor) -> torch.Tensor:
        """HPV logits from bottleneck features and clinical data (features can be reused)."""
        pooled = torch.cat([features.mean(dim=(2, 3, 4)), features.amax(dim=(2, 3, 4))], dim=1)
        fused = torch.cat([pooled.float(), self.clinical(clinical.float())], dim=1)
        return self.head(fused).squeeze(1)

    def forward(self, image: torch.Tensor, clinical: torch.Tensor) -> HPVOutput:
        segmentation = self.unet(image)
        features, self._features = self._features, None
        assert features is not None, "the bottleneck hook did not fire"
        return HPVOutput(segmentation, self.logit(features, clinical))
