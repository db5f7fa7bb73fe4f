"""Inference on new patients: folders, a broken patient, reruns, and the challenge container."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import torch

from hecktor import evaluation, fingerprints, io, locks
from hecktor.cli import main
from hecktor.data import layout
from hecktor.data.preprocess import load_prepared
from hecktor.devices import autocast_for, cpu_supports_bf16
from hecktor.inference.batch import find_patients, predict_container, predict_folder
from hecktor.inference.sources import load_bundles
from hecktor.io import OutputError
from hecktor.tasks import TASKS
from hecktor.tasks.spec import PatientInputs, resolve
from tests.test_io import full_disk

pytestmark = pytest.mark.slow
AGREEMENT = 0.999  # of voxels labelled alike in bf16 and fp32


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

    # the outputs score with the evaluators, as worked out here by hand
    seg = evaluation.evaluate_segmentation(out, release_dir / "Task 1")
    truths = evaluation.truth_masks(release_dir / "Task 1")
    dsc = []
    for pid in patients:
        pred = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"{pid}.nii.gz"))) == 1
        truth = sitk.GetArrayFromImage(sitk.ReadImage(str(truths[pid]))) == 1
        both = pred.sum() + truth.sum()
        dsc.append(1.0 if both == 0 else 2 * (pred & truth).sum() / both)
    assert seg["GTVp_DSC"] == pytest.approx(np.mean(dsc))
    rfs = pd.read_csv(release_dir / "Task 2" / layout.TASK_CSV[2]).merge(frame, on="PatientID")
    pairs = concordant = 0.0
    for a in rfs.itertuples():
        for b in rfs.itertuples():
            if a.Relapse == 1 and (a.RFS < b.RFS or (a.RFS == b.RFS and b.Relapse == 0)):
                pairs += 1
                concordant += (
                    1.0 if a.RFS_risk > b.RFS_risk else 0.5 if a.RFS_risk == b.RFS_risk else 0
                )
    table = release_dir / "Task 2" / layout.TASK_CSV[2]
    c_index = evaluation.evaluate_survival(out / "predictions.csv", table)["c_index"]
    assert c_index == pytest.approx(concordant / pairs) if pairs else np.isnan(c_index)
    hpv = pd.read_csv(release_dir / "Task 3" / layout.TASK_CSV[3]).merge(frame, on="PatientID")
    recalls = [(hpv["HPV_status"][hpv["HPV Status"] == c] == c).mean()
               for c in sorted(set(hpv["HPV Status"]))]  # fmt: skip
    table = release_dir / "Task 3" / layout.TASK_CSV[3]
    ba = evaluation.evaluate_hpv(out / "predictions.csv", table)["balanced_accuracy"]
    assert ba == pytest.approx(np.mean(recalls))

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
                 str(clinical), "--models", str(bundles["seg"].root.parent)])  # fmt: skip
    assert code == 3  # some patients failed
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
    found = {p.patient: p for p in find_patients(root, clinical).patients}
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
    assert files == [io.MARKER, "hpv-status.json",
                     "images/tumor-lymph-node-segmentation/output.mha", "rfs.json"]  # fmt: skip
    assert sorted(written) == sorted(out / f for f in files if f != io.MARKER)
    mask = sitk.ReadImage(str(out / "images/tumor-lymph-node-segmentation/output.mha"))
    assert mask.GetPixelID() == sitk.sitkUInt8 and mask.GetSize() == ct.GetSize()
    np.testing.assert_allclose(mask.GetOrigin(), ct.GetOrigin(), atol=1e-4)
    assert isinstance(json.loads((out / "rfs.json").read_text()), float)
    assert isinstance(json.loads((out / "hpv-status.json").read_text()), bool)
    predict_container(bundles, tmp_path / "input", out)  # its own outputs: replaced
    other = tmp_path / "other"  # an output folder holding someone else's result
    (other / "images/tumor-lymph-node-segmentation").mkdir(parents=True)
    (other / "rfs.json").write_text("0.5")
    with pytest.raises(OutputError, match=r"rfs\.json: exists and was not written by"):
        predict_container(bundles, tmp_path / "input", other)
    assert (other / "rfs.json").read_text() == "0.5"


def test_container_mode_names_a_bad_ehr_value(bundles, release_dir, tmp_path, caplog):
    pid = sorted(p.name for p in (release_dir / "Task 1").iterdir() if p.is_dir())[0]
    src = release_dir / "Task 1" / pid
    ct = sitk.ReadImage(str(src / f"{pid}__CT.nii.gz"))
    pet = sitk.ReadImage(str(src / f"{pid}__PT.nii.gz"))
    layout.write_container_input(tmp_path / "input", pid, ct, pet, {"Gender": "robot"})
    code = main(["predict", "--container", "--input", str(tmp_path / "input"), "--output",
                 str(tmp_path / "output"), "--models", str(bundles["seg"].root.parent)])  # fmt: skip
    assert code == 2
    assert pid in caplog.text and "ehr.json" in caplog.text and "Gender" in caplog.text
    assert not (tmp_path / "output").exists()


# --------------------------------------------------------------------------- reruns and clinical input


def _clinical_csv(path, patients, header="PatientID,Age,Gender", rows=None):
    rows = rows if rows is not None else [f"{p},{60 + i},M" for i, p in enumerate(patients)]
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def _outputs(out):
    frame = pd.read_csv(out / "predictions.csv").set_index("PatientID").sort_index()
    masks = {p.name: sitk.GetArrayFromImage(sitk.ReadImage(str(p))) for p in out.glob("*.nii.gz")}
    return frame, masks


def test_a_rerun_after_inputs_change_gives_what_a_fresh_output_gives(
    bundles, release_dir, tmp_path
):
    root = tmp_path / "new"
    pids = _patient_folders(release_dir, root, 4)
    clinical = _clinical_csv(tmp_path / "clinical.csv", pids)
    out = tmp_path / "out"
    first = predict_folder(bundles, root, out, clinical)
    assert first["predicted"] == 4 and first["reused"] == 0
    # one PET deleted, one patient's images replaced by another's, one age changed, one gone
    (root / pids[0] / "PET.mha").unlink()
    for name in ("CT.nii.gz", "PET.mha"):
        shutil.copy(root / pids[2] / name, root / pids[1] / name)
    _clinical_csv(
        clinical, pids, rows=[f"{p},{90 if i == 3 else 60 + i},M" for i, p in enumerate(pids)]
    )
    shutil.rmtree(root / pids[2])
    again = predict_folder(bundles, root, out, clinical)
    fresh = predict_folder(bundles, root, tmp_path / "fresh", clinical)
    assert again["reused"] == 0  # every remaining patient changed in some way
    assert [f["PatientID"] for f in again["failed"]] == [pids[0]]
    assert again["removed"] == [pids[2]]
    got, got_masks = _outputs(out)
    want, want_masks = _outputs(tmp_path / "fresh")
    pd.testing.assert_frame_equal(got, want)
    assert sorted(got_masks) == sorted(want_masks) == [f"{p}.nii.gz" for p in (pids[1], pids[3])]
    for name in want_masks:
        np.testing.assert_array_equal(got_masks[name], want_masks[name])
    assert again["predicted"] == fresh["predicted"] == 2
    # unchanged inputs are reused
    assert predict_folder(bundles, root, out, clinical)["reused"] == 2


def test_misspelt_clinical_headers_exit_2_naming_the_expected_columns(
    bundles, release_dir, tmp_path, caplog
):
    root = tmp_path / "new"
    pids = _patient_folders(release_dir, root, 1)
    clinical = _clinical_csv(tmp_path / "c.csv", pids, "PatientID,age,sex", [f"{pids[0]},61,M"])
    out = tmp_path / "out"
    code = main(["predict", "--input", str(root), "--output", str(out), "--clinical",
                 str(clinical), "--models", str(bundles["seg"].root.parent)])  # fmt: skip
    assert code == 2
    assert (
        "unknown column(s) ['age', 'sex']" in caplog.text and "'Tobacco Consumption'" in caplog.text
    )
    assert not out.exists()


def test_clinical_rows_and_patients_must_match_or_be_named(bundles, release_dir, tmp_path, caplog):
    root = tmp_path / "new"
    pids = _patient_folders(release_dir, root, 3)
    rows = [f"{pids[0]},61,M", f"../{pids[1]},70,F", "XYZ-999,50,F"]  # none for pids[1], pids[2]
    clinical = _clinical_csv(tmp_path / "c.csv", pids, rows=rows)
    manifest = predict_folder(bundles, root, tmp_path / "out", clinical)
    failed = {f["PatientID"]: f["reason"] for f in manifest["failed"]}
    assert sorted(failed) == sorted(pids[1:]) and all(
        "no clinical row" in r for r in failed.values()
    )
    assert "XYZ-999" in manifest["clinical_rows_unused"]
    assert any("row 3" in r for r in manifest["clinical_rows_unused"])  # the ../ row, by position
    assert "XYZ-999" in caplog.text and f"../{pids[1]}" in caplog.text
    assert manifest["predicted"] == 1


def test_no_clinical_data_is_an_explicit_choice(bundles, release_dir, tmp_path, caplog):
    root = tmp_path / "new"
    _patient_folders(release_dir, root, 1)
    models = ["--models", str(bundles["seg"].root.parent)]
    args = ["predict", "--input", str(root), *models, "--output"]
    assert main([*args, str(tmp_path / "a")]) == 2
    assert "--no-clinical" in caplog.text and not (tmp_path / "a").exists()
    assert main([*args, str(tmp_path / "b"), "--no-clinical"]) == 0
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["predicted"] == 1 and "--no-clinical" in manifest["clinical"]


def test_a_pet_overlapping_the_ct_by_7_mm_fails_that_patient(bundles, release_dir, tmp_path):
    root = tmp_path / "new"
    pids = _patient_folders(release_dir, root, 2)
    ct = sitk.ReadImage(str(root / pids[0] / "CT.nii.gz"))
    pet = sitk.ReadImage(str(root / pids[0] / "PET.mha"))
    top = layout.physical_bounds(ct)[1][2]
    origin = list(pet.GetOrigin())
    origin[2] += top - 7.0 - layout.physical_bounds(pet)[0][2]
    pet.SetOrigin(origin)
    sitk.WriteImage(pet, str(root / pids[0] / "PET.mha"))
    manifest = predict_folder(bundles, root, tmp_path / "out", no_clinical=True)
    assert [f["PatientID"] for f in manifest["failed"]] == [pids[0]]
    assert "covers only" in manifest["failed"][0]["reason"]
    assert manifest["predicted"] == 1


def test_predict_never_writes_into_a_foreign_folder_or_its_input(bundles, release_dir, tmp_path):
    root = tmp_path / "new"
    _patient_folders(release_dir, root, 1)
    foreign = tmp_path / "results"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    for out in (foreign, root, root / "out", tmp_path):
        before = sorted(str(p) for p in tmp_path.rglob("*"))
        with pytest.raises(OutputError):
            predict_folder(bundles, root, out, no_clinical=True)
        assert sorted(str(p) for p in tmp_path.rglob("*")) == before
    assert (foreign / "notes.txt").read_text() == "mine"


# what the inference image leaves out: the pipeline's code and the pipeline extra's packages
BLOCKED = ("hecktor.training", "hecktor.crossval", "hecktor.tuning", "hecktor.derive",
           "hecktor.register", "optuna", "lifelines", "dvc", "sklearn", "matplotlib")  # fmt: skip


def test_inference_stands_without_training_scoring_and_tuning_code(
    bundle_dir, release_dir, tmp_path
):
    """A slim image may leave training, scoring and tuning out: predict must not need them."""
    script = f"""
import sys
class Blocked:
    def find_spec(self, name, path=None, target=None):
        if any(name == b or name.startswith(b + ".") for b in {BLOCKED!r}):
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Blocked())
from hecktor.inference.batch import predict_folder
from hecktor.inference.sources import load_bundles
bundles = load_bundles({str(tmp_path / "store")!r}, {str(bundle_dir)!r}, models_dir={str(bundle_dir)!r})
manifest = predict_folder(bundles, {str(release_dir)!r}, {str(tmp_path / "out")!r})
print("predicted", manifest["predicted"], "failed", len(manifest["failed"]))
print("loaded", sorted(m for m in sys.modules if m.startswith({BLOCKED!r})))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    patients = sorted(p.name for p in (release_dir / "Task 1").iterdir() if p.is_dir())
    assert f"predicted {len(patients)} failed 0" in done.stdout
    assert "loaded []" in done.stdout


def test_prediction_of_a_new_patient_is_the_scoring_path_on_its_prepared_case(
    bundles, trained_cfg, release_dir
):
    """predict preprocesses, segments and classifies a patient exactly as training and scoring
    do with the prepared cohort: the same steps, the same fitted values."""
    import math

    import torch

    from hecktor.checkpoints import model_from
    from hecktor.data.preprocess import Geometry, load_prepared, to_original_grid
    from hecktor.devices import autocast_for, precision_for
    from hecktor.inference.batch import Predictor, read_images
    from hecktor.lesions import remove_small_lesions
    from hecktor.tasks.hpv import HPVTask
    from hecktor.tasks.seg import SegmentationTask

    patient = find_patients(release_dir).patients[0]
    prediction = Predictor(bundles, "cpu")(read_images(patient), patient.clinical)
    mask, row = prediction.mask, prediction.row

    cpu, prepared = torch.device("cpu"), trained_cfg.paths.prepared
    autocast = autocast_for(precision_for("auto", cpu), cpu)  # what predict runs in
    case = load_prepared(prepared, patient.patient)
    seg_task = SegmentationTask(trained_cfg.seg, prepared)
    seg_model = model_from(seg_task, bundles["seg"].weights(bundles["seg"].members[0]), cpu)
    labels = seg_task.predict(seg_model, case.image, cpu, autocast)
    labels = remove_small_lesions(labels, trained_cfg.seg.min_lesion_mm3, seg_task.voxel_mm3)
    on_ct = to_original_grid(
        labels, Geometry.from_dict(case.meta["grid"]), Geometry.from_dict(case.meta["ct_grid"])
    )
    np.testing.assert_array_equal(sitk.GetArrayFromImage(mask), sitk.GetArrayFromImage(on_ct))

    hpv_task = HPVTask(trained_cfg.hpv, trained_cfg.seg, prepared)
    logits = []
    for member in bundles["hpv"].members:
        model = model_from(hpv_task, bundles["hpv"].weights(member), cpu)
        logits.append(hpv_task.logits(model, [patient.patient], cpu, autocast)[0])
    expected = 1.0 / (1.0 + math.exp(-float(np.mean(logits))))
    assert row["HPV_probability"] == pytest.approx(expected, abs=1e-6)


def test_nnunet_naming_masks_only_with_probabilities_and_qc_pictures(
    bundles, bundle_dir, release_dir, tmp_path, caplog
):
    """nnU-Net's flat CASE_0000 (CT) / CASE_0001 (PET) input, `--tasks seg` (the segmentation
    model alone), `--save-probabilities` and `--qc`; the masks are those of the folder layout."""
    patients = sorted(p.name for p in (release_dir / "Task 1").iterdir() if p.is_dir())[:2]
    flat = tmp_path / "imagesTs"
    flat.mkdir()
    for pid in patients:
        src = release_dir / "Task 1" / pid
        shutil.copy(src / f"{pid}__CT.nii.gz", flat / f"{pid}_0000.nii.gz")
        shutil.copy(src / f"{pid}__PT.nii.gz", flat / f"{pid}_0001.nii.gz")
    out = tmp_path / "out"
    code = main(["predict", "-i", str(flat), "-o", str(out), "--tasks", "seg", "--no-clinical",
                 "--models", str(bundle_dir), "--save-probabilities", "--qc"])  # fmt: skip
    assert code == 0, caplog.text
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["tasks"] == ["seg"] and set(manifest["models"]) == {"seg"}  # one model loaded
    assert list(pd.read_csv(out / "predictions.csv").columns) == ["PatientID"]
    assert "GTVp" in (out / "labels.itksnap.txt").read_text()
    assert "1 GTVp 26 204 51 255" in (out / "labels.slicer.ctbl").read_text()
    reference = tmp_path / "reference"
    predict_folder(bundles, release_dir, reference)
    for pid in patients:
        mask = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"{pid}.nii.gz")))
        expected = sitk.GetArrayFromImage(sitk.ReadImage(str(reference / f"{pid}.nii.gz")))
        np.testing.assert_array_equal(mask, expected)
        probabilities = np.load(out / f"{pid}.npz")["probabilities"].astype(np.float32)
        assert probabilities.shape == (3, *mask.shape)
        np.testing.assert_allclose(probabilities.sum(axis=0), 1.0, atol=1e-2)
        inside = probabilities.max(axis=0) > 0.9  # where the call is clear, it is the mask's
        assert (probabilities.argmax(axis=0)[inside] == mask[inside]).mean() > 0.99
        assert (out / "qc" / f"{pid}.png").read_bytes()[:4] == b"\x89PNG"


def test_the_overlap_option_is_checked_and_keys_the_results(
    bundle_dir, release_dir, tmp_path, caplog
):
    root, out = tmp_path / "new", tmp_path / "out"
    _patient_folders(release_dir, root, 2)
    args = ["predict", "-i", str(root), "-o", str(out), "--tasks", "seg,hpv", "--no-clinical",
            "--models", str(bundle_dir)]  # fmt: skip
    assert main([*args, "--overlap", "1.5"]) == 2
    assert "seg.sw_overlap" in caplog.text
    assert main([*args, "--overlap", "0.25"]) == 0
    first = json.loads((out / "manifest.json").read_text())
    assert first["overlap"] == 0.25 and first["tasks"] == ["seg", "hpv"] and first["reused"] == 0
    assert main([*args, "--overlap", "0.25"]) == 0
    assert json.loads((out / "manifest.json").read_text())["reused"] == first["predicted"]
    assert main(args) == 0  # another overlap: predicted again
    assert json.loads((out / "manifest.json").read_text())["reused"] == 0


def test_changed_models_predict_again_and_the_environment_and_uris_choose_them(
    bundle_dir, release_dir, tmp_path, monkeypatch
):
    """A rerun with other models (another digest) reuses nothing; ``HECKTOR_MODELS`` stands for
    ``--models``, and a per-task URI replaces that task's model alone."""
    root, out = tmp_path / "new", tmp_path / "out"
    _patient_folders(release_dir, root, 2)
    args = ["predict", "-i", str(root), "-o", str(out), "--tasks", "hpv", "--no-clinical"]
    monkeypatch.setenv("HECKTOR_MODELS", str(bundle_dir))
    assert main(args) == 0
    first = json.loads((out / "manifest.json").read_text())
    assert first["models"]["hpv"]["source"] == str(bundle_dir / "hecktor-hpv")
    assert main(args) == 0
    assert json.loads((out / "manifest.json").read_text())["reused"] == 2

    other = tmp_path / "other-hpv"  # the same weights under another manifest: another digest
    shutil.copytree(bundle_dir / "hecktor-hpv", other)
    manifest = json.loads((other / "bundle.json").read_text())
    manifest["metrics"]["note"] = "retrained"
    (other / "bundle.json").write_text(json.dumps(manifest))
    assert main([*args, "--hpv-model", str(other)]) == 0
    again = json.loads((out / "manifest.json").read_text())
    assert again["reused"] == 0 and again["predicted"] == 2
    assert again["models"]["hpv"]["source"] == str(other)
    assert again["models"]["seg"]["source"] == str(bundle_dir / "hecktor-seg")
    assert again["models"]["hpv"]["digest"] != first["models"]["hpv"]["digest"]


@pytest.mark.skipif(not cpu_supports_bf16(), reason="this CPU has no native bf16")
def test_bf16_labels_agree_with_fp32_on_this_cpu(bundles, trained_cfg):
    """predict runs under bf16 autocast on such CPUs: where fp32 is clear about a voxel (its top
    two class probabilities 0.1 apart or more), bf16 must label it alike; bf16's rounding may flip
    only the voxels fp32 itself hesitates over. Kernels differ between CPUs: checked on this one."""
    cpu = torch.device("cpu")
    segmenter = resolve(TASKS["seg"].predictor)
    fp32 = segmenter(bundles["seg"], cpu, autocast_for("fp32", cpu))
    bf16 = segmenter(bundles["seg"], cpu, autocast_for("bf16", cpu))
    prepared = trained_cfg.paths.prepared
    for patient in sorted(pd.read_csv(prepared / "cases.csv")["PatientID"])[:3]:
        image = np.asarray(load_prepared(prepared, patient).image)
        inputs = PatientInputs(patient, image, pd.DataFrame(index=[patient]), {})
        a, b = fp32(inputs), bf16(inputs)
        top = np.sort(a.probabilities.astype(np.float32), axis=0)
        clear = top[-1] - top[-2] >= 0.1
        assert clear.mean() > 0.5, (patient, clear.mean())  # the check covers most voxels
        agree = (a.labels == b.labels)[clear].mean()
        assert agree >= AGREEMENT, (patient, agree)


# --------------------------------------------------------------------------- nothing lost, nothing stale


def _predict_command(*args) -> list[str]:
    return [sys.executable, "-m", "hecktor.cli", "predict", *map(str, args)]


def _wait_for(check, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_two_predicts_into_one_folder_the_second_stops_naming_the_first(
    bundle_dir, release_dir, tmp_path
):
    """Two real `hecktor predict` processes, other inputs, one output folder: the second exits 2
    naming the first, which then completes with every one of its patients."""
    other = tmp_path / "other"
    _patient_folders(release_dir, other, 2)
    out = tmp_path / "out"
    first = subprocess.Popen(_predict_command("-i", release_dir, "-o", out, "--models", bundle_dir),
                             cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)  # fmt: skip
    try:
        _wait_for(lambda: (locks.holder(out) or {}).get("pid") == first.pid)
        os.kill(first.pid, signal.SIGSTOP)  # holding the folder, whatever the machine's speed
        second = subprocess.run(
            _predict_command("-i", other, "-o", out, "--no-clinical", "--models", bundle_dir),
            cwd=tmp_path, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert second.returncode == 2, second.stderr
        assert f"`hecktor predict` (process {first.pid} on" in second.stderr
        assert "is writing it" in second.stderr
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert first.wait(timeout=600) == 0, first.stderr.read() if first.stderr else ""
    manifest = json.loads((out / "manifest.json").read_text())
    patients = sorted(p.name for p in (release_dir / "Task 1").iterdir() if p.is_dir())
    assert manifest["status"] == "complete" and manifest["predicted"] == len(patients)
    assert sorted(p.stem.removesuffix(".nii") for p in out.glob("*.nii.gz")) == patients


def test_a_killed_rerun_leaves_a_folder_that_says_it_is_incomplete(
    bundle_dir, release_copy, tmp_path, caplog
):
    """SIGKILL of a rerun after two patients' images changed: the folder must not look like a
    finished result; evaluate refuses it; the next run completes it as a fresh folder would."""
    out = tmp_path / "out"
    args = ["-i", release_copy, "-o", out, "--models", bundle_dir]
    assert main(["predict", *map(str, args)]) == 0
    patients = sorted(p.name for p in (release_copy / "Task 1").iterdir() if p.is_dir())
    for pid in patients[:2]:  # their PET changes; grids and labels stay
        path = release_copy / "Task 1" / pid / f"{pid}__PT.nii.gz"
        sitk.WriteImage(sitk.ReadImage(str(path)) * 1.5, str(path))
    rerun = subprocess.Popen(_predict_command(*args), cwd=tmp_path, stderr=subprocess.DEVNULL)

    def running() -> bool:
        try:
            return json.loads((out / "manifest.json").read_text())["status"] == "running"
        except (OSError, ValueError, KeyError):
            return False

    _wait_for(running)
    rerun.kill()
    rerun.wait()
    assert not (out / "predictions.csv").exists()  # no summary of the previous run left
    table = release_copy / "Task 3" / layout.TASK_CSV[3]
    score = ["evaluate", "hpv", "--pred", str(out / "predictions.csv"), "--truth", str(table),
             "--out", str(tmp_path / "hpv.json")]  # fmt: skip
    assert main(score) == 2
    assert "incomplete: `hecktor predict` stopped before the end" in caplog.text
    seg = ["evaluate", "seg", "--pred", str(out), "--truth", str(release_copy / "Task 1"),
           "--out", str(tmp_path / "seg.json")]  # fmt: skip
    assert main(seg) == 2 and not (tmp_path / "seg.json").exists()

    assert main(["predict", *map(str, args)]) == 0
    assert main(score) == 0 and main(seg) == 0
    fresh = tmp_path / "fresh"
    assert main(["predict", "-i", str(release_copy), "-o", str(fresh), "--models",
                 str(bundle_dir)]) == 0  # fmt: skip
    got, got_masks = _outputs(out)
    want, want_masks = _outputs(fresh)
    pd.testing.assert_frame_equal(got, want)
    for name in want_masks:
        np.testing.assert_array_equal(got_masks[name], want_masks[name])


def test_a_full_disk_stops_predict_and_publishes_no_mask(bundles, release_dir, tmp_path,
                                                          monkeypatch):  # fmt: skip
    """ITK returns normally when the disk fills: the short mask is never published, so a rerun
    cannot take it for a result."""
    root, out = tmp_path / "new", tmp_path / "out"
    _patient_folders(release_dir, root, 2)
    with monkeypatch.context() as patched:
        full_disk(patched)
        with pytest.raises(io.WriteError, match=r"\.nii\.gz: no space left on the disk"):
            predict_folder(bundles, root, out, no_clinical=True)
    assert list(out.glob("*.nii.gz")) == [] and list((out / ".parts").iterdir()) == []
    assert not (out / "predictions.csv").exists()
    with pytest.raises(OutputError, match="incomplete"):
        evaluation.evaluate_segmentation(out, release_dir / "Task 1")
    again = predict_folder(bundles, root, out, no_clinical=True)
    assert again["reused"] == 0 and again["predicted"] == 2 and again["status"] == "complete"


def test_a_rerun_after_an_edit_of_the_inference_code_predicts_again(
    bundles, release_dir, tmp_path, monkeypatch
):
    root, out = tmp_path / "new", tmp_path / "out"
    _patient_folders(release_dir, root, 1)
    predict_folder(bundles, root, out, no_clinical=True)
    assert predict_folder(bundles, root, out, no_clinical=True)["reused"] == 1
    edited = tmp_path / "src" / "hecktor"
    shutil.copytree(fingerprints.PACKAGE, edited, ignore=shutil.ignore_patterns("__pycache__"))
    with (edited / "prediction.py").open("a") as handle:
        handle.write("\n# an edit\n")
    monkeypatch.setattr(fingerprints, "PACKAGE", edited)
    assert predict_folder(bundles, root, out, no_clinical=True)["reused"] == 0


def test_a_flipped_bit_in_an_exported_weights_file_is_refused_naming_it(
    bundle_dir, release_dir, tmp_path, caplog
):
    models = tmp_path / "models"
    shutil.copytree(bundle_dir, models)
    weights = models / "hecktor-seg" / "model.pt"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x10
    weights.write_bytes(bytes(data))
    root, out = tmp_path / "new", tmp_path / "out"
    _patient_folders(release_dir, root, 1)
    code = main(["predict", "-i", str(root), "-o", str(out), "--no-clinical", "--tasks", "seg",
                 "--models", str(models)])  # fmt: skip
    assert code == 2
    assert f"{weights}: its bytes differ from those the bundle recorded" in caplog.text
    assert not out.exists()
