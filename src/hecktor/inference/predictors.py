"""Each task's predictor: a bundle loaded for prediction, as a function of one patient's inputs
(:class:`~hecktor.tasks.spec.PatientInputs`) to its :class:`~hecktor.tasks.spec.Outcome`. Apart from
training and scoring (:mod:`hecktor.tasks`), so that prediction needs neither their code nor their
packages."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from hecktor.bundle import Bundle
from hecktor.checkpoints import restored
from hecktor.config import HpvConfig, RfsConfig, SegConfig
from hecktor.data.clinical import ClinicalEncoder
from hecktor.data.preprocess import grid_of
from hecktor.errors import UserError
from hecktor.lesions import remove_small_lesions
from hecktor.models.segmentation import build_segmenter
from hecktor.networks import hpv_network, plan_of, rfs_input, rfs_network, seg_plan
from hecktor.prediction import (
    hpv_features,
    hpv_logit,
    rfs_risk,
    segment_probabilities,
)
from hecktor.tasks.spec import Outcome, PatientInputs, Predict


def seg(bundle: Bundle, device: torch.device, autocast: Callable) -> Predict:
    """Segment on the prepared grid, then drop lesions below ``seg.min_lesion_mm3``."""
    cfg: SegConfig = bundle.settings("seg")
    spacing, shape = grid_of(bundle.manifest["prepared"])
    state = bundle.weights(bundle.members[0], device)
    # bundles of networks trained before plans were saved: planned from their config
    plan = plan_of(state) or seg_plan(cfg, spacing, shape)
    model = restored(build_segmenter(plan), state, device)
    voxel_mm3 = float(np.prod(spacing))

    def predict(inputs: PatientInputs) -> Outcome:
        probabilities = segment_probabilities(
            model, inputs.image, plan.patch, overlap=cfg.sw_overlap,
            sw_batch_size=cfg.sw_batch_size, device=device, autocast=autocast,
        )  # fmt: skip
        labels = probabilities.argmax(0).numpy().astype(np.uint8)
        return Outcome(labels=remove_small_lesions(labels, cfg.min_lesion_mm3, voxel_mm3),
                       probabilities=probabilities.numpy().astype(np.float16))  # fmt: skip

    return predict


def hpv(bundle: Bundle, device: torch.device, autocast: Callable) -> Predict:
    """Each fold's logit from the image and the clinical row; status 1 when their mean is > 0."""
    seg_cfg: SegConfig = bundle.settings("seg")
    cfg: HpvConfig = bundle.settings("hpv")
    spacing, shape = grid_of(bundle.manifest["prepared"])
    members = []
    for member in bundle.members:
        state = bundle.weights(member, device)
        encoder = ClinicalEncoder.from_dict(state["task"]["encoder"])
        plan = plan_of(state) or seg_plan(seg_cfg, spacing, shape)
        model = restored(hpv_network(cfg, plan, encoder), state, device)
        members.append((member["fold"], model, encoder))

    def predict(inputs: PatientInputs) -> Outcome:
        steps = {"device": device, "autocast": autocast}
        logits = {
            fold: hpv_logit(model, hpv_features(model, inputs.image, **steps),
                            encoder.transform(inputs.clinical)[0], **steps)
            for fold, model, encoder in members
        }  # fmt: skip
        logit = float(np.mean(list(logits.values())))
        return Outcome({"HPV_probability": 1.0 / (1.0 + math.exp(-logit)),
                        "HPV_status": int(logit > 0)}, members=logits)  # fmt: skip

    return predict


def rfs(bundle: Bundle, device: torch.device, autocast: Callable) -> Predict:
    """Each member's standardised risk from the images, the predicted masks and the clinical row
    with Task 3's HPV status (the ensemble's, or in the paper's chain one Task 3 fold's); their
    mean."""
    cfg: RfsConfig = bundle.settings("rfs")
    hpv_fold = bundle.manifest.get("hpv_fold")
    spacing, _ = grid_of(bundle.manifest["prepared"])
    members = []
    for member in bundle.members:
        state = bundle.weights(member, device)
        encoder = ClinicalEncoder.from_dict(state["task"]["encoder"])
        model = restored(rfs_network(cfg, encoder, spacing), state, device)
        members.append((model, encoder, member["risk_mean"], member["risk_std"]))

    def predict(inputs: PatientInputs) -> Outcome:
        image = rfs_input(cfg, inputs.upstream["seg"].labels, spacing,
                          lambda box: inputs.image[(slice(None), *box)])  # fmt: skip
        hpv = inputs.upstream["hpv"]
        status = float(hpv.columns["HPV_status"])
        if hpv_fold is not None:
            if hpv_fold not in hpv.members:
                raise UserError(f"the Task 2 model takes HPV status from Task 3 fold {hpv_fold}; "
                                 f"the Task 3 model has {', '.join(hpv.members) or 'no folds'}")  # fmt: skip
            status = float(hpv.members[hpv_fold] > 0)
        clinical = inputs.clinical.assign(**{"HPV Status": status})
        risks = [
            (rfs_risk(model, image, encoder.transform(clinical)[0], device=device,
                      autocast=autocast) - mean) / std
            for model, encoder, mean, std in members
        ]  # fmt: skip
        return Outcome({"RFS_risk": float(np.mean(risks))})

    return predict
