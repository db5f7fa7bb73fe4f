"""Task 2 network: a lightweight MONAI 3D ResNet18 on CT, PET and the GTVp/GTVn masks, fused with
the clinical variables (two-layer MLP) before a linear risk output (log-hazard, higher = riskier).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import ResNet
from torch import nn

IN_CHANNELS = 4  # CT, PET, GTVp mask, GTVn mask


def _to_group_norm(module: nn.Module, groups: int = 4) -> None:
    """Swap every BatchNorm for GroupNorm: batch statistics are unreliable in small survival
    batches (and undefined for a last batch of one). MONAI's ResNet ignores ``norm`` in some blocks,
    hence the swap after construction."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm3d):
            channels = child.num_features
            setattr(module, name, nn.GroupNorm(min(groups, channels), channels))
        else:
            _to_group_norm(child, groups)


class SurvivalNet(nn.Module):
    def __init__(self, clinical_width: int, widths: Sequence[int] = (32, 64, 128, 256),
                 mlp_width: int = 32, dropout: float = 0.2) -> None:  # fmt: skip
        super().__init__()
        self.encoder = ResNet(
            block="basic",
            layers=[2, 2, 2, 2],  # ResNet18
            block_inplanes=list(widths),
            spatial_dims=3,
            n_input_channels=IN_CHANNELS,
            conv1_t_size=7,
            conv1_t_stride=2,
            feed_forward=False,
        )
        _to_group_norm(self.encoder)
        self.clinical = nn.Sequential(
            nn.Linear(clinical_width, mlp_width),
            nn.ReLU(),
            nn.Linear(mlp_width, mlp_width),
            nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(widths[-1] + mlp_width, 1))

    def forward(self, image: torch.Tensor, clinical: torch.Tensor) -> torch.Tensor:
        """(B,) risks from (B, 4, Z, Y, X) images and (B, clinical_width) clinical vectors."""
        features = self.encoder(image).float()
        return self.head(torch.cat([features, self.clinical(clinical.float())], dim=1)).squeeze(1)
