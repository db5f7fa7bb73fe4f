"""Task 2's two chains (the paper's and the ensemble), scored on true and predicted inputs and
registered as ``rfs.chain`` says."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hecktor.bundle import load_bundle
from hecktor.config import override
from hecktor.data.clinical import read_clinical
from hecktor.data.preprocess import load_prepared
from hecktor.devices import autocast_for
from hecktor.register import build_bundles
from hecktor.tasks import spec_of
from hecktor.tasks.rfs import SINGLE_FOLD, rfs_inputs_dir
from hecktor.tasks.spec import Outcome, PatientInputs, resolve

pytestmark = pytest.mark.slow


def test_both_chains_are_scored_on_true_and_on_predicted_inputs(trained_cfg):
    result = json.loads((trained_cfg.paths.metrics / "rfs.json").read_text())
    test = json.loads(trained_cfg.paths.splits.read_text())["task2"]["test"]
    paper, ensemble = result["chains"]["paper"], result["chains"]["ensemble"]
    on_true = result["network_on_true"]["gt"]["folds"]
    assert paper["fold"] == max(on_true, key=lambda f: on_true[f]["c_index"] or -1)
    assert (
        paper["hpv_fold"]
        == json.loads((rfs_inputs_dir(trained_cfg) / SINGLE_FOLD).read_text())["fold"]
    )
    assert paper["true"]["fold_validation"] == on_true[paper["fold"]]
    assert (
        ensemble["mode"] == "pred"
        and ensemble["predicted"]["cv"] == result["network"]["pred"]["cv"]
    )
    for chain in (paper, ensemble):
        for side in ("true", "predicted"):
            assert chain[side]["cv"]["n"] == result["network"]["gt"]["cv"]["n"]
            assert chain[side]["test"]["n"] == len(test)
    report = (trained_cfg.paths.reports / "rfs.md").read_text()
    rows = [line for line in report.splitlines() if line.startswith(("| paper:", "| ensemble:"))]
    assert len(rows) == 4 and sum("| true masks and HPV |" in r for r in rows) == 2


def test_the_paper_chain_registers_its_best_fold_with_hpv_from_one_task3_fold(
    trained_cfg, tmp_path
):
    cfg = trained_cfg.model_copy(update={"rfs": override(trained_cfg.rfs, chain="paper")})
    out = build_bundles(cfg, tmp_path / "bundles", ["rfs"])["rfs"]
    bundle = load_bundle(out)
    chain = json.loads((cfg.paths.metrics / "rfs.json").read_text())["chains"]["paper"]
    assert [m["fold"] for m in bundle.members] == [chain["fold"]]
    assert bundle.manifest["hpv_fold"] == chain["hpv_fold"] and bundle.manifest["mode"] == "gt"

    cpu = torch.device("cpu")
    predict = resolve(spec_of("rfs").predictor)(bundle, cpu, autocast_for("fp32", cpu))
    patient = json.loads(cfg.paths.splits.read_text())["task2"]["test"][0]
    image = load_prepared(cfg.paths.prepared, patient).image
    mask = np.load(rfs_inputs_dir(cfg) / "masks" / f"{patient}.npy")
    clinical = read_clinical(cfg.paths.prepared).loc[[patient]]

    def risk(members: dict[str, float]) -> float:
        hpv = Outcome({"HPV_status": 1, "HPV_probability": 0.9}, members=members)
        upstream = {"seg": Outcome(labels=mask), "hpv": hpv}
        return predict(PatientInputs(patient, image, clinical, upstream)).columns["RFS_risk"]

    # the ensemble's status says positive; the chain follows its one fold's logit instead
    negative, positive = risk({chain["hpv_fold"]: -2.0}), risk({chain["hpv_fold"]: 2.0})
    assert negative != positive
    with pytest.raises(ValueError, match=f"Task 3 fold {chain['hpv_fold']}"):
        risk({"another-fold": 1.0})
