"""train() and crossval on the tiny profile, tracked in a real MLflow store."""

import json
import os

import mlflow
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from mlflow.tracking import MlflowClient

from hecktor import comparison, tracking
from hecktor.checkpoints import trained_checkpoint
from hecktor.crossval.seg import crossval_seg
from hecktor.data import layout
from hecktor.data.folds import folds_of
from hecktor.fingerprints import file_sha256
from hecktor.register import build_bundles, register_models
from hecktor.training.workflow import train

VERDICTS = {comparison.NETWORK_AHEAD, comparison.BASELINE_AHEAD, comparison.NO_DIFFERENCE,
            comparison.UNKNOWN}  # fmt: skip


@pytest.fixture
def trained(project_cfg, monkeypatch):
    """Task 1 trained on the tiny profile (slow: tests using it are marked)."""
    monkeypatch.delenv(tracking.ENV, raising=False)
    summary = train(project_cfg, "seg")
    yield project_cfg, summary
    mlflow.set_tracking_uri(None)
    os.environ.pop(tracking.ENV, None)


@pytest.mark.slow
def test_train_writes_models_summary_curves_and_runs(trained):
    cfg, summary = trained
    fold = cfg.paths.models / "seg" / "holdout"
    assert {p.name for p in fold.iterdir()} == {"best.pt", "swa.pt", "final.json"}  # versioned
    state = cfg.paths.mlruns / "resume" / "seg" / "holdout"  # optimizer state, not versioned
    assert {p.name for p in state.iterdir()} == {"last.pt", "swa_last.pt"}
    assert json.loads((cfg.paths.models / "seg" / "summary.json").read_text()) == summary
    assert set(summary["folds"]["holdout"]["swa"]) == {
        "GTVp_DSC",
        "GTVn_DSCagg",
        "GTVn_F1agg",
        "score",
    }
    history = (cfg.paths.plots / "seg" / "history.csv").read_text().splitlines()
    assert (
        history[0].startswith("fold,epoch,train_loss") and len(history) == 1 + cfg.seg.train.epochs
    )

    client = MlflowClient(tracking.tracking_uri(cfg.paths.mlruns))
    experiment = client.get_experiment_by_name("hecktor-seg")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(parents) == 1 and [c.info.run_name for c in children] == ["holdout"]
    for run in (parents[0], children[0]):  # every run tag (test_tracking pins their names)
        assert set(tracking.run_tags(cfg, cfg.seg.split)) <= set(run.data.tags)
        assert run.info.status == "FINISHED"
    child = children[0]
    assert len(client.get_metric_history(child.info.run_id, "train_loss")) == cfg.seg.train.epochs
    assert "swa_score" in child.data.metrics and "best_score" in child.data.metrics
    # the weights stay DVC's: the run names them by digest and holds no copy
    final = trained_checkpoint(cfg.paths.models / "seg" / "holdout")
    assert child.data.tags[tracking.WEIGHTS_TAG] == file_sha256(final)
    assert not [a for a in client.list_artifacts(child.info.run_id) if a.path.endswith(".pt")]
    assert parents[0].data.params["seg.train.lr"] == str(cfg.seg.train.lr)


@pytest.mark.slow
def test_rerun_resumes_finished_folds_without_training(trained):
    cfg, first = trained
    again = train(cfg, "seg")
    assert again["folds"] == first["folds"]


@pytest.mark.slow
def test_crossval_scores_every_variant_on_the_ct_grid(trained):
    cfg, _ = trained
    result = crossval_seg(cfg)
    assert set(result["variants"]) == {"best", "best_pp", "swa", "swa_pp", "baseline"}
    assert result["chosen"] == "swa_pp"
    assert set(result["comparison"]) == {"GTVp_DSC", "GTVn_DSCagg", "GTVn_F1agg", "score"}
    for metric, compared in result["comparison"].items():  # the figures compared: the variants'
        assert compared["network"] == pytest.approx(result["variants"]["swa_pp"][metric])
        assert compared["baseline"] == pytest.approx(result["variants"]["baseline"][metric])
        assert compared["verdict"] in VERDICTS
    saved = json.loads((cfg.paths.metrics / "seg.json").read_text())
    assert saved == json.loads(json.dumps(result))
    assert (cfg.paths.plots / "seg" / "mip.png").stat().st_size > 1000
    assert (
        "| metric | network | baseline | difference | verdict |"
        in (cfg.paths.reports / "seg.md").read_text()
    )

    # the registered model is logged from this evaluation run and names the run that trained it
    registered = register_models(cfg, build_bundles(cfg, cfg.paths.models / "bundles", ["seg"]), {})
    client = MlflowClient(tracking.tracking_uri(cfg.paths.mlruns))
    version = client.get_model_version("hecktor-seg", registered["seg"]["version"])
    runs = {r.info.run_name: r for r in client.search_runs(
        [client.get_experiment_by_name("hecktor-seg").experiment_id])}  # fmt: skip
    assert version.run_id == runs["evaluate_seg"].info.run_id
    assert version.tags["training_run.holdout"] == runs["holdout"].info.run_id

    from hecktor.data.folds import load_splits

    _, _, val_ids = folds_of(load_splits(cfg.paths.splits), "task1", "holdout")[0]
    release = layout.scan_release(cfg.paths.release)
    for patient in val_ids:
        ct = layout.read_nifti(release.image_case(patient).ct)
        mask = sitk.ReadImage(str(cfg.paths.predictions / "seg" / "swa_pp" / f"{patient}.nii.gz"))
        assert layout.same_grid(mask, ct)
        assert set(np.unique(sitk.GetArrayFromImage(mask)).tolist()) <= {0, 1, 2}


@pytest.mark.slow
def test_hpv_trains_from_task1_weights_and_is_scored_with_its_baseline(trained):
    from hecktor.checkpoints import load_checkpoint
    from hecktor.crossval.hpv import ABLATIONS, ablate_hpv, crossval_hpv

    cfg, _ = trained
    summary = train(cfg, "hpv")
    assert set(summary["folds"]) == {f"fold-{i}" for i in range(cfg.split.folds)}
    state = load_checkpoint(cfg.paths.models / "hpv" / "fold-0" / "best.pt")
    assert state["task"]["encoder"]["variables"] == [
        "Age",
        "Gender",
        "Tobacco Consumption",
        "Alcohol Consumption",
    ]

    result = crossval_hpv(cfg)
    for family in ("network", "baseline"):
        assert set(result[family]["folds"]) == set(summary["folds"])
        assert {"test_best_fold", "test_ensemble"} <= set(result[family])
    # the CV balanced accuracy is the pooled out-of-fold calls' (logit > 0), worked out by hand
    calls = pd.read_csv(cfg.paths.plots / "hpv" / "confusion.csv")
    recalls = [(calls["predicted"][calls["actual"] == c] == c).mean()
               for c in sorted(set(calls["actual"]))]  # fmt: skip
    assert result["network"]["cv"]["balanced_accuracy"] == pytest.approx(np.mean(recalls))
    assert len(calls) == sum(f["val"] for f in summary["folds"].values())
    assert "loco" in result["baseline"]  # the baseline's leave-one-centre-out is always reported
    assert result["oracle"]["cv"]["balanced_accuracy"] >= 0.0
    assert set(result["comparison"]) == {f"{split}_{figure}" for split in ("cv", "test_ensemble")
                                         for figure in ("balanced_accuracy", "auc")}  # fmt: skip
    cv = result["comparison"]["cv_balanced_accuracy"]
    assert cv["network"] == pytest.approx(result["network"]["cv"]["balanced_accuracy"])
    assert cv["baseline"] == pytest.approx(result["baseline"]["cv"]["balanced_accuracy"])
    assert (cfg.paths.plots / "hpv" / "roc_cv.csv").read_text().startswith("fpr,tpr")
    assert (cfg.paths.plots / "hpv" / "confusion.csv").read_text().startswith("actual,predicted")
    assert "| network |" in (cfg.paths.reports / "hpv.md").read_text()

    ablation = ablate_hpv(cfg)
    assert [r["unknown"] for r in ablation["rows"]] == [name for name, _ in ABLATIONS]
    assert (cfg.paths.reports / "hpv_ablation.md").is_file()

    # Task 2 stands on both: masks from Task 1, HPV from Task 3
    from hecktor.crossval.rfs import crossval_rfs
    from hecktor.derive import derive_rfs_inputs

    derive_rfs_inputs(cfg)
    rfs = train(cfg, "rfs")
    assert {name.split("-", 1)[0] for name in rfs["folds"]} == {"gt", "pred"}
    inputs = cfg.paths.models / "rfs_inputs"
    frame = __import__("pandas").read_csv(inputs / "inputs.csv")
    assert set(frame["hpv_source"]) <= {"out-of-fold", "ensemble"}
    assert len(list((inputs / "masks").glob("*.npy"))) == len(frame)
    result = crossval_rfs(cfg)
    assert set(result["network"]) == {"gt", "pred"}
    for family in (
        result["network"]["gt"],
        result["network"]["pred"],
        result["baseline_clinical"],
        result["baseline_clinical_image"],
    ):
        assert "cv" in family and "per_centre" in family
    assert "loco" in result["baseline_clinical"] and "oracle" in result
    assert (cfg.paths.plots / "rfs" / "km.png").stat().st_size > 1000
    assert "| clinical Cox |" in (cfg.paths.reports / "rfs.md").read_text()


def test_checkpoints_are_keyed_by_code_and_training_settings_only(tiny_config, monkeypatch):
    from hecktor.config import override
    from hecktor.training import workflow

    fold = ("holdout", ["A-1"], ["A-2"])
    key = workflow.resume_key(tiny_config, "seg", fold, "data")
    assert workflow.resume_key(tiny_config, "seg", fold, "data") == key
    scoring_only = override(
        tiny_config, seg=override(tiny_config.seg, min_lesion_mm3=500.0, baseline_suv=3.0)
    )
    assert workflow.resume_key(scoring_only, "seg", fold, "data") == key
    training = override(tiny_config, seg=override(tiny_config.seg, base_filters=8))
    assert workflow.resume_key(training, "seg", fold, "data") != key
    assert workflow.resume_key(tiny_config, "seg", fold, "other data") != key
    monkeypatch.setattr(workflow, "training_code", lambda: "edited code")
    assert workflow.resume_key(tiny_config, "seg", fold, "data") != key


@pytest.mark.slow
def test_segresnet_trains_tasks_1_and_3_from_its_stored_plan(project_cfg):
    """The second network runs the same chain: Task 1, then Task 3 from Task 1's weights; each
    checkpoint carries its plan, and a later config cannot change a trained network."""
    import torch

    from hecktor.checkpoints import load_checkpoint, load_trained, trained_checkpoint
    from hecktor.config import override
    from hecktor.tasks.hpv import HPVTask
    from hecktor.tasks.seg import SegmentationTask

    seg = override(project_cfg.seg, network="segresnet", base_filters=8)
    cfg = override(project_cfg, seg=seg)
    train(cfg, "seg", track=False)
    seg_weights = trained_checkpoint(cfg.paths.models / "seg" / "holdout")
    plan = load_checkpoint(seg_weights)["task"]["plan"]
    assert plan["network"] == "segresnet" and plan["filters"][0] == 8

    replanned = override(cfg, seg=override(seg, network="dynunet", base_filters=4))
    model, _ = load_trained(
        SegmentationTask(replanned.seg, cfg.paths.prepared),
        cfg.paths.models / "seg" / "holdout",
        torch.device("cpu"),
    )
    assert type(model).__name__ == "SegResNetSegmenter"  # rebuilt from the checkpoint's plan

    task = HPVTask(cfg.hpv, cfg.seg, cfg.paths.prepared, seg_weights)
    fresh = task.build_model()
    task.warm_start(fresh)
    start = load_checkpoint(seg_weights)["model"]
    for name, value in fresh.segmenter.state_dict().items():
        torch.testing.assert_close(value, start[name])
    summary = train(cfg, "hpv", track=False)
    assert set(summary["folds"]) == {f"fold-{i}" for i in range(cfg.split.folds)}
    state = load_checkpoint(cfg.paths.models / "hpv" / "fold-0" / "best.pt")
    assert state["task"]["plan"] == plan
