"""Inference on new patients: folders, a broken patient, reruns, and the challenge container."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from hecktor import evaluation
from hecktor.cli import main
from hecktor.data import layout
from hecktor.inference.batch import find_patients, predict_container, predict_folder
from hecktor.inference.bundle import load_bundles

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bundles(bundle_dir, tmp_path_factory):
    return load_bundles(tmp_path_factory.mktemp("no-store"), bundle_dir, models_dir=bundle_dir)


def test_release_folder_gives_masks_on_the_ct_grid_and_a_csv_the_evaluators_score(
    bundles, release_dir, tmp_path
):
    out = tmp_path / "out"
    manifest = predict_folder(bundles, release_dir, out)
    patients = sorted(p.name for p in (release_dir / "Task 1").iterdir() if p.is_dir())
    assert manifest["predicted"] == len(patients) and manifest["failed"] == []
    for pid in patients:
        mask = sitk.ReadImage(str(out / f"{pid}.nii.gz"))
        ct = sitk.ReadImage(str(release_dir / "Task 1" / pid / f"{pid}__CT.nii.gz"))
        assert mask.GetSize() == ct.GetSize()
        np.testing.assert_allclose(mask.GetOrigin(), ct.GetOrigin(), atol=1e-4)
        np.testing.assert_allclose(mask.GetDirection(), ct.GetDirection(), atol=1e-6)
        assert set(np.unique(sitk.GetArrayViewFromImage(mask))) <= {0, 1, 2}
    frame = pd.read_csv(out / "predictions.csv")
    assert list(frame.columns) == ["PatientID", "HPV_probability", "HPV_status", "RFS_risk"]
    assert frame["HPV_probability"].between(0, 1).all()
    assert set(frame["HPV_status"]) <= {0, 1}
    assert np.isfinite(frame["RFS_risk"]).all()
    assert set(manifest["models"]) == {"seg", "hpv", "rfs"}
    assert json.loads((out / "manifest.json").read_text()) == manifest

    seg = evaluation.evaluate_segmentation(out, release_dir / "Task 1")
    assert 0.0 <= seg["GTVp_DSC"] <= 1.0
    table = release_dir / "Task 2" / layout.TASK_CSV[2]
    assert 0.0 <= evaluation.evaluate_survival(out / "predictions.csv", table)["c_index"] <= 1.0
    table = release_dir / "Task 3" / layout.TASK_CSV[3]
    assert 0 <= evaluation.evaluate_hpv(out / "predictions.csv", table)["balanced_accuracy"] <= 1

    # a rerun reuses every finished patient
    again = predict_folder(bundles, release_dir, out)
    assert again["reused"] == len(patients) and again["predicted"] == len(patients)


def _patient_folders(release_dir, root, count):
    """``<PID>/CT.nii.gz`` and ``PET.mha``: the loose layout, with a clinical CSV."""
    patients = sorted(p.name for p in (release_dir / "Task 1").iterdir() if p.is_dir())[:count]
    for pid in patients:
        (root / pid).mkdir(parents=True)
        src = release_dir / "Task 1" / pid
        shutil.copy(src / f"{pid}__CT.nii.gz", root / pid / "CT.nii.gz")
        sitk.WriteImage(sitk.ReadImage(str(src / f"{pid}__PT.nii.gz")), str(root / pid / "PET.mha"))
    return patients


def test_a_broken_patient_is_reported_and_the_others_are_predicted(
    bundles, release_dir, tmp_path, caplog
):
    root = tmp_path / "new"
    good = _patient_folders(release_dir, root, 3)
    broken = good.pop(1)
    data = (root / broken / "PET.mha").read_bytes()
    (root / broken / "PET.mha").write_bytes(data[: len(data) // 2])  # truncated
    clinical = tmp_path / "clinical.csv"
    clinical.write_text(f"PatientID,Age,Gender\n{good[0]},61,M\n{good[1]},,F\n")
    out = tmp_path / "out"
    code = main(["predict", "--input", str(root), "--output", str(out), "--clinical",
                 str(clinical), "--models", str(bundles.seg.root.parent)])  # fmt: skip
    assert code == 1
    assert broken in caplog.text and "PET.mha" in caplog.text
    manifest = json.loads((out / "manifest.json").read_text())
    assert [f["PatientID"] for f in manifest["failed"]] == [broken]
    assert "PET.mha" in manifest["failed"][0]["reason"]
    assert sorted(pd.read_csv(out / "predictions.csv")["PatientID"]) == sorted(good)
    assert sorted(p.name for p in out.glob("*.nii.gz")) == sorted(f"{p}.nii.gz" for p in good)


def test_missing_modality_and_unreadable_clinical_value_are_named(release_dir, tmp_path):
    root = tmp_path / "new"
    pids = _patient_folders(release_dir, root, 2)
    (root / pids[0] / "PET.mha").unlink()
    clinical = tmp_path / "clinical.csv"
    clinical.write_text(f"PatientID,Age\n{pids[1]},sixty\n")
    found = {p.patient: p for p in find_patients(root, clinical)}
    assert "no PET file" in str(found[pids[0]].problems)
    assert "unreadable value 'sixty'" in str(found[pids[1]].problems)


def test_container_mode_writes_exactly_the_official_outputs(bundles, release_dir, tmp_path):
    pid = sorted(p.name for p in (release_dir / "Task 1").iterdir() if p.is_dir())[0]
    src = release_dir / "Task 1" / pid
    ct = sitk.ReadImage(str(src / f"{pid}__CT.nii.gz"))
    pet = sitk.ReadImage(str(src / f"{pid}__PT.nii.gz"))
    ehr = {"Age": 58, "Gender": 1, "Tobacco Consumption": None, "Alcohol Consumption": 0,
           "Performance Status": 1, "Treatment": "RT", "M-stage": "M0", "CenterID": "CHUM"}  # fmt: skip
    layout.write_container_input(tmp_path / "input", pid, ct, pet, ehr)
    written = predict_container(bundles, tmp_path / "input", tmp_path / "output")
    out = tmp_path / "output"
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == ["hpv-status.json", "images/tumor-lymph-node-segmentation/output.mha",
                     "rfs.json"]  # fmt: skip
    assert sorted(written) == sorted(out / f for f in files)
    mask = sitk.ReadImage(str(out / "images/tumor-lymph-node-segmentation/output.mha"))
    assert mask.GetPixelID() == sitk.sitkUInt8 and mask.GetSize() == ct.GetSize()
    np.testing.assert_allclose(mask.GetOrigin(), ct.GetOrigin(), atol=1e-4)
    assert isinstance(json.loads((out / "rfs.json").read_text()), float)
    assert isinstance(json.loads((out / "hpv-status.json").read_text()), bool)


def test_container_mode_names_a_bad_ehr_value(bundles, release_dir, tmp_path, caplog):
    pid = sorted(p.name for p in (release_dir / "Task 1").iterdir() if p.is_dir())[0]
    src = release_dir / "Task 1" / pid
    ct = sitk.ReadImage(str(src / f"{pid}__CT.nii.gz"))
    pet = sitk.ReadImage(str(src / f"{pid}__PT.nii.gz"))
    layout.write_container_input(tmp_path / "input", pid, ct, pet, {"Gender": "robot"})
    code = main(["predict", "--container", "--input", str(tmp_path / "input"), "--output",
                 str(tmp_path / "output"), "--models", str(bundles.seg.root.parent)])  # fmt: skip
    assert code == 2
    assert pid in caplog.text and "ehr.json" in caplog.text and "Gender" in caplog.text
    assert not (tmp_path / "output").exists()
