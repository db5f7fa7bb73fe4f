"""`hecktor evaluate` end to end on real NIfTI files and CSVs."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from hecktor import evaluation
from hecktor.cli import main
from hecktor.data import layout
from hecktor.data.layout import InputError


@pytest.fixture
def perfect_predictions(tmp_path, release_dir):
    pred = tmp_path / "pred"
    pred.mkdir()
    for case in layout.scan_release(release_dir).cases[1]:
        shutil.copy(case.label, pred / f"{case.patient}.nii.gz")
    return pred


def test_perfect_segmentation_scores_one(tmp_path, perfect_predictions, release_dir):
    out = tmp_path / "seg.json"
    code = main(["evaluate", "seg", "--pred", str(perfect_predictions), "--truth", str(release_dir / "Task 1"), "--out", str(out)])  # fmt: skip
    assert code == 0
    result = json.loads(out.read_text())
    assert (
        result["GTVp_DSC"] == 1.0 and result["GTVn_DSCagg"] == 1.0 and result["GTVn_F1agg"] == 1.0
    )
    assert result["score"] == 1.0 and len(result["patients"]) == 8
    assert set(result["per_centre"]) == {"CHUM", "MDA", "USZ"}


def test_flat_truth_folder_and_an_empty_prediction(tmp_path, perfect_predictions, release_dir):
    flat = tmp_path / "truth"
    shutil.copytree(perfect_predictions, flat)
    victim = sorted(perfect_predictions.glob("*.nii.gz"))[0]
    label = sitk.ReadImage(str(victim))
    empty = sitk.Image(label.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(label)
    sitk.WriteImage(empty, str(victim))
    result = evaluation.evaluate_segmentation(perfect_predictions, flat)
    patient = victim.name.removesuffix(".nii.gz")
    truth = sitk.GetArrayFromImage(label)
    assert result["patients"][patient]["GTVp_DSC"] == (0.0 if (truth == 1).any() else 1.0)
    assert result["GTVp_DSC"] < 1.0 or not (truth == 1).any()


def test_missing_prediction_is_named(tmp_path, perfect_predictions, release_dir, caplog):
    victim = sorted(perfect_predictions.glob("*.nii.gz"))[0]
    victim.unlink()
    out = tmp_path / "seg.json"
    code = main(["evaluate", "seg", "--pred", str(perfect_predictions), "--truth", str(release_dir / "Task 1"), "--out", str(out)])  # fmt: skip
    assert code == 2
    assert f"{victim.name.removesuffix('.nii.gz')}: " in caplog.text
    assert "in the truth but not predicted" in caplog.text
    assert not out.exists()


def test_extra_prediction_is_ignored_by_name_for_every_task(
    perfect_predictions, release_dir, tmp_path, caplog
):
    shutil.copy(
        sorted(perfect_predictions.glob("*.nii.gz"))[0], perfect_predictions / "XYZ-999.nii.gz"
    )
    result = evaluation.evaluate_segmentation(perfect_predictions, release_dir / "Task 1")
    assert result["GTVp_DSC"] == 1.0 and "XYZ-999" in caplog.text
    caplog.clear()
    truth = release_dir / "Task 2" / layout.TASK_CSV[2]
    patients = pd.read_csv(truth)["PatientID"].tolist()
    pred = tmp_path / "risk.csv"
    pred.write_text(
        "PatientID,Prediction\n"
        + "".join(f"{p},{i}\n" for i, p in enumerate([*patients, "XYZ-888"]))
    )
    evaluation.evaluate_survival(pred, truth)
    assert "XYZ-888" in caplog.text


def test_prediction_off_grid_is_named(perfect_predictions, release_dir):
    victim = sorted(perfect_predictions.glob("*.nii.gz"))[0]
    image = sitk.ReadImage(str(victim))
    image.SetOrigin(tuple(o + 3 for o in image.GetOrigin()))
    sitk.WriteImage(image, str(victim))
    with pytest.raises(InputError, match="not on the truth's"):
        evaluation.evaluate_segmentation(perfect_predictions, release_dir / "Task 1")


def _truth_table(release_dir, task):
    return release_dir / f"Task {task}" / layout.TASK_CSV[task]


def test_rfs_c_index(tmp_path, release_dir):
    table = pd.read_csv(_truth_table(release_dir, 2))
    pred = tmp_path / "rfs.csv"
    pd.DataFrame({"PatientID": table["PatientID"], "Prediction": -table["RFS"]}).to_csv(
        pred, index=False
    )
    out = tmp_path / "rfs.json"
    assert main(["evaluate", "rfs", "--pred", str(pred), "--truth", str(_truth_table(release_dir, 2)), "--out", str(out)]) == 0  # fmt: skip
    result = json.loads(out.read_text())
    assert result["c_index"] == 1.0  # risk = -time orders every comparable pair
    assert result["n_patients"] == len(table)


def test_rfs_unreadable_prediction_is_named(tmp_path, release_dir):
    table = pd.read_csv(_truth_table(release_dir, 2))
    pred = tmp_path / "rfs.csv"
    frame = pd.DataFrame({"PatientID": table["PatientID"], "Prediction": 1.0}).astype(
        {"Prediction": object}
    )
    frame.loc[0, "Prediction"] = "high"
    frame.to_csv(pred, index=False)
    with pytest.raises(
        InputError, match=f"{table.loc[0, 'PatientID']}: .*unreadable prediction 'high'"
    ):
        evaluation.evaluate_survival(pred, _truth_table(release_dir, 2))


def test_hpv_balanced_accuracy(tmp_path, release_dir):
    table = pd.read_csv(_truth_table(release_dir, 3))
    pred = tmp_path / "hpv.csv"
    pd.DataFrame({"PatientID": table["PatientID"], "Prediction": 1}).to_csv(pred, index=False)
    result = evaluation.evaluate_hpv(pred, _truth_table(release_dir, 3))
    expected = 1.0 if table["HPV Status"].nunique() == 1 else 0.5
    assert result["balanced_accuracy"] == expected
    pd.DataFrame({"PatientID": table["PatientID"], "Prediction": 0.7}).to_csv(pred, index=False)
    with pytest.raises(InputError, match="is not 0 or 1"):
        evaluation.evaluate_hpv(pred, _truth_table(release_dir, 3))


def test_hpv_missing_patient_is_named(tmp_path, release_dir):
    table = pd.read_csv(_truth_table(release_dir, 3))
    pred = tmp_path / "hpv.csv"
    pd.DataFrame({"PatientID": table["PatientID"][1:], "Prediction": 1}).to_csv(pred, index=False)
    with pytest.raises(InputError, match=f"{table['PatientID'][0]}: .*not predicted"):
        evaluation.evaluate_hpv(pred, _truth_table(release_dir, 3))


def test_result_is_json_serialisable_numbers(perfect_predictions, release_dir):
    result = evaluation.evaluate_segmentation(perfect_predictions, release_dir / "Task 1")
    assert isinstance(json.loads(json.dumps(result))["GTVn_F1agg"], float)
    assert np.isfinite(result["score"])


def _risk_and_truth(tmp_path, release_dir, relapse: int):
    table = pd.read_csv(_truth_table(release_dir, 2))
    table["Relapse"] = relapse
    truth = tmp_path / "truth.csv"
    table.to_csv(truth, index=False)
    pred = tmp_path / "rfs.csv"
    pd.DataFrame({"PatientID": table["PatientID"], "Prediction": -table["RFS"]}).to_csv(
        pred, index=False
    )
    return pred, truth


def test_rfs_without_events_writes_strict_json_with_null_and_says_why(
    tmp_path, release_dir, caplog
):
    pred, truth = _risk_and_truth(tmp_path, release_dir, relapse=0)
    out = tmp_path / "rfs.json"
    assert main(["evaluate", "rfs", "--pred", str(pred), "--truth", str(truth), "--out", str(out)]) == 0  # fmt: skip
    text = out.read_text()
    result = json.loads(text, parse_constant=pytest.fail)  # NaN would call parse_constant
    assert result["c_index"] is None and result["n_events"] == 0
    assert "no relapse" in caplog.text and "written as null" in caplog.text


def test_evaluate_out_that_is_a_folder_or_someone_elses_file_is_one_line_exit_2(
    tmp_path, release_dir, caplog
):
    pred, truth = _risk_and_truth(tmp_path, release_dir, relapse=1)
    folder = tmp_path / "results"
    folder.mkdir()
    args = ["evaluate", "rfs", "--pred", str(pred), "--truth", str(truth), "--out"]
    assert main([*args, str(folder)]) == 2
    assert "is a folder" in caplog.text and "Traceback" not in caplog.text
    assert list(folder.iterdir()) == []
    foreign = tmp_path / "notes.json"
    foreign.write_text('{"mine": true}')
    assert main([*args, str(foreign)]) == 2
    assert foreign.read_text() == '{"mine": true}'
    assert main([*args, str(pred)]) == 2  # the output would overwrite an input
    assert pred.read_text().startswith("PatientID,Prediction")
    ours = tmp_path / "rfs.json"
    assert main([*args, str(ours)]) == 0 and main([*args, str(ours)]) == 0  # its own: rewritten
