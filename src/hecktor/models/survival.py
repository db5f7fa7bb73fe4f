"""Task 2 network: a lightweight MONAI 3D ResNet18 on CT, PET and the GTVp/GTVn masks, fused with
the clinical variables (:mod:`hecktor.models.fusion`) into a risk (log-hazard, higher = riskier).

With ``lesion_features`` the fusion also sees four statistics of the input's own masks: the log
volumes of the primary and of the nodes, and the highest and mean PET value inside the lesions.
They are what radiomics studies of the HECKTOR data found prognostic, and a network trained on a
few hundred patients learns them from voxels only roughly (beyond the paper).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import ResNet
from torch import nn

from hecktor.models.fusion import Fused, Fusion

IN_CHANNELS = 4  # CT, PET, GTVp mask, GTVn mask
LESION_FEATURES = ("log_primary_cc", "log_nodes_cc", "pet_max_lesions", "pet_mean_primary")


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


def lesion_statistics(image: torch.Tensor, voxel_cc: float) -> torch.Tensor:
    """(B, 4) :data:`LESION_FEATURES` of (B, 4, Z, Y, X) inputs (mask channels: voxel fractions)."""
    pet, primary, nodes = image[:, 1].float(), image[:, 2].float(), image[:, 3].float()
    volumes = [m.sum(dim=(1, 2, 3)) * voxel_cc for m in (primary, nodes)]
    lesion = (primary + nodes) > 0.5
    floor = torch.finfo(pet.dtype).min
    pet_max = torch.where(lesion, pet, torch.full_like(pet, floor)).amax(dim=(1, 2, 3))
    pet_max = torch.where(lesion.flatten(1).any(dim=1), pet_max, torch.zeros_like(pet_max))
    weight = primary.sum(dim=(1, 2, 3))
    pet_mean = (pet * primary).sum(dim=(1, 2, 3)) / weight.clamp(min=1e-6)
    return torch.stack([torch.log1p(volumes[0]), torch.log1p(volumes[1]), pet_max, pet_mean], 1)


class SurvivalNet(Fused):
    def __init__(self, clinical_width: int, widths: Sequence[int] = (32, 64, 128, 256),
                 mlp_width: int = 32, dropout: float = 0.2, fusion: Fusion = "concat",
                 lesion_features: bool = False, voxel_cc: float = 0.001) -> None:  # fmt: skip
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
        self.lesion_features = lesion_features
        self.voxel_cc = voxel_cc
        extra = len(LESION_FEATURES) if lesion_features else 0
        self.build_fusion(fusion, widths[-1], clinical_width, mlp_width, dropout, extra)

    def _extra(self, image: torch.Tensor) -> torch.Tensor | None:
        return lesion_statistics(image, self.voxel_cc) if self.lesion_features else None

    def forward(self, image: torch.Tensor, clinical: torch.Tensor) -> torch.Tensor:
        """(B,) risks from (B, 4, Z, Y, X) images and (B, clinical_width) clinical vectors."""
        return self.fuse(self.encoder(image), clinical, self._extra(image))

    def parts(self, image: torch.Tensor, clinical: torch.Tensor) -> dict[str, torch.Tensor]:
        """The risk's clinical and image terms (additive fusion only)."""
        return self.fused_parts(self.encoder(image), clinical, self._extra(image))
