"""How a network joins image features and clinical data into one output (a risk or a logit).

``concat`` (the paper's): a two-layer MLP embeds the clinical vector, the embedding is concatenated
with the image features, and after dropout one linear layer gives the output. With a few hundred
patients the image features, many and free, fit the training patients on their own while the
clinical embedding stays little used, although the clinical variables carry much of the signal.

``additive`` (beyond the paper): the output is a linear term of the clinical vector (the form of
the clinical Cox and logistic baselines), plus a linear term of simple lesion statistics where the
network has them, plus a linear term of the image features after dropout, that last one starting
at zero. Training starts from the clinical model and adds what the image features explain on top
of it; weight decay and the choice of the best epoch on validation patients keep that addition as
small as the data ask.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

Fusion = Literal["concat", "additive"]


class Fused(nn.Module):
    """Base of the networks that fuse image features with clinical data: builds ``clinical`` and
    ``head`` (the paper's names, so that the ``concat`` form's weights keep their keys) and joins
    (B, F) image features, (B, C) clinical vectors and optional (B, E) extra features, which enter
    linearly in both forms, into (B,) outputs."""

    def build_fusion(self, fusion: Fusion, image_width: int, clinical_width: int,
                     mlp_width: int = 32, dropout: float = 0.2, extra_width: int = 0) -> None:  # fmt: skip
        self.fusion = fusion
        if fusion == "concat":
            self.clinical = nn.Sequential(
                nn.Linear(clinical_width, mlp_width),
                nn.ReLU(),
                nn.Linear(mlp_width, mlp_width),
                nn.ReLU(),
            )
            self.head = nn.Sequential(
                nn.Dropout(dropout), nn.Linear(image_width + mlp_width + extra_width, 1)
            )
        elif fusion == "additive":
            self.clinical = nn.Linear(clinical_width + extra_width, 1)
            self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(image_width, 1))
            nn.init.zeros_(self.head[1].weight)
            nn.init.zeros_(self.head[1].bias)
        else:
            raise ValueError(f"unknown fusion {fusion!r}: concat or additive")

    def start_from_linear(self, weights, bias: float = 0.0) -> None:
        """Set the additive form's clinical term to a fitted linear model (the task's clinical
        baseline on the same training patients): training then starts from that model."""
        if self.fusion != "additive":
            raise ValueError("only the additive fusion has a linear clinical term")
        with torch.no_grad():
            self.clinical.weight.copy_(torch.as_tensor(weights, dtype=torch.float32)[None])
            self.clinical.bias.fill_(float(bias))

    def fuse(
        self, image: torch.Tensor, clinical: torch.Tensor, extra: torch.Tensor | None = None
    ) -> torch.Tensor:
        image, clinical = image.float(), clinical.float()
        if self.fusion == "concat":
            parts = [image, self.clinical(clinical)] + ([] if extra is None else [extra.float()])
            return self.head(torch.cat(parts, dim=1)).squeeze(1)
        return sum(self.fused_parts(image, clinical, extra).values())

    def fused_parts(
        self, image: torch.Tensor, clinical: torch.Tensor, extra: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """The additive form's output split into its clinical (with extra) and image terms, to see
        which one carries the prediction."""
        if self.fusion != "additive":
            raise ValueError("only the additive fusion splits into parts")
        inputs = [clinical.float()] + ([] if extra is None else [extra.float()])
        return {"clinical": self.clinical(torch.cat(inputs, dim=1)).squeeze(1),
                "image": self.head(image.float()).squeeze(1)}  # fmt: skip
