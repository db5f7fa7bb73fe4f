"""The networks and inputs each task builds from its settings, in one place for training and
prediction: a trained network is rebuilt for prediction exactly as it was built to train."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from hecktor.config import HpvConfig, RfsConfig, SegConfig
from hecktor.data.clinical import ClinicalEncoder
from hecktor.data.preprocess import WHOLE
from hecktor.lesions import lesion_box
from hecktor.models.hpv import HPVNet
from hecktor.models.segmentation import Plan, build_segmenter, make_plan
from hecktor.models.survival import SurvivalNet
from hecktor.planning import within
from hecktor.prediction import survival_input


def seg_plan(cfg: SegConfig, spacing: Sequence[float], shape: Sequence[int]) -> Plan:
    """Task 1's network planned from the config, its patch clipped to the prepared volume."""
    patch = within(cfg.patch_size, shape)
    return make_plan(cfg.network, patch, spacing, cfg.base_filters, cfg.max_filters)


def plan_of(state: dict) -> Plan | None:
    """The plan a checkpoint's network was built from (None in checkpoints older than plans)."""
    plan = state.get("task", {}).get("plan")
    return Plan.from_dict(plan) if plan else None


def hpv_network(cfg: HpvConfig, plan: Plan, encoder: ClinicalEncoder) -> HPVNet:
    """Task 3's network: the planned Task 1 network, a head and the clinical MLP."""
    return HPVNet(build_segmenter(plan), encoder.width, cfg.mlp_width, cfg.dropout, cfg.fusion)


def rfs_network(cfg: RfsConfig, encoder: ClinicalEncoder, spacing: Sequence[float]) -> SurvivalNet:
    """Task 2's network for the clinical encoding a fold fitted, on the prepared grid's
    ``spacing`` (mm; its input grid is ``rfs.input_pool`` times coarser)."""
    voxel_cc = float(np.prod(spacing)) * cfg.input_pool**3 / 1000
    return SurvivalNet(encoder.width, cfg.widths, cfg.mlp_width, cfg.dropout, cfg.fusion,
                       cfg.lesion_features, voxel_cc)  # fmt: skip


def rfs_input(
    cfg: RfsConfig,
    mask: np.ndarray,
    spacing: Sequence[float],
    read: Callable[[tuple[slice, ...]], np.ndarray],
) -> np.ndarray:
    """Task 2's input on ``rfs``'s grid: ``read`` gives the prepared image (2, ...) of a box of the
    volume (all of it, or ``rfs.input_box_mm`` around the lesions of ``mask``, a mask on its
    grid), so that only that box need be read."""
    box = WHOLE
    if cfg.input_box_mm is not None:
        size = [max(1, round(mm / s)) for mm, s in zip(cfg.input_box_mm, spacing, strict=True)]
        box = lesion_box(mask, size)
    return survival_input(read(box), mask[box], cfg.input_pool)
