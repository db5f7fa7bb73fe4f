from collections import Counter

import pytest

from hecktor.data import splits
from hecktor.data.folds import load_splits


def test_kfold_validates_each_patient_once():
    patients = [f"C{i % 3}-{i:03d}" for i in range(30)]
    centres = [p.split("-")[0] for p in patients]
    labels = [i % 2 for i in range(30)]
    folds = splits.kfold(patients, centres, labels, 5, seed=1)
    assert len(folds) == 5
    validated = [p for f in folds for p in f["val"]]
    assert sorted(validated) == sorted(patients)
    for fold in folds:
        assert not set(fold["train"]) & set(fold["val"])
        # stratified: each fold holds two patients of each centre
        assert Counter(p.split("-")[0] for p in fold["val"]) == {"C0": 2, "C1": 2, "C2": 2}


def test_kfold_is_deterministic():
    patients = [f"A-{i}" for i in range(12)]
    args = (patients, ["A"] * 12, [0, 1] * 6, 3)
    assert splits.kfold(*args, seed=3) == splits.kfold(*args, seed=3)
    assert splits.kfold(*args, seed=3) != splits.kfold(*args, seed=4)


def test_rare_strata_fall_back():
    keys = splits.strata(["A", "A", "A", "B"], [0, 0, 0, 1], folds=3)
    assert keys == ["A|0", "A|0", "A|0", "*|*"]


def test_too_few_patients_is_an_error():
    with pytest.raises(ValueError, match=r"split\.folds"):
        splits.kfold(["A-1", "A-2"], ["A", "A"], [0, 1], 3, seed=0)


def test_leave_one_centre_out():
    patients = ["A-1", "A-2", "B-1", "C-1"]
    folds = splits.leave_one_centre_out(patients, ["A", "A", "B", "C"])
    assert [f["centre"] for f in folds] == [["A"], ["B"], ["C"]]
    assert folds[0] == {"centre": ["A"], "train": ["B-1", "C-1"], "val": ["A-1", "A-2"]}
    assert splits.leave_one_centre_out(patients[:2], ["A", "A"]) == []


def test_holdout_size():
    patients = [f"A-{i:03d}" for i in range(680)]
    fold = splits.holdout(patients, ["A"] * 680, [i % 2 for i in range(680)], 0.053, seed=0)
    assert len(fold["val"]) == 36  # the paper's 36 of 680
    assert len(fold["train"]) == 644


def test_split_file_from_prepared_data(tmp_path, prepared_dir, split_cfg):
    out = tmp_path / "splits.json"
    result = splits.write_splits(prepared_dir, out, split_cfg)
    assert load_splits(out) == result
    for task in ("task1", "task2", "task3"):
        entry = result[task]
        test = set(entry.get("test", []))
        assert len(entry["kfold"]) == split_cfg.folds
        assert sum(len(f["val"]) for f in entry["kfold"]) == entry["patients"] - len(test)
        for fold in entry["kfold"] + entry["loco"]:
            assert not test & (set(fold["train"]) | set(fold["val"]))  # no fold sees the test set
    assert "holdout" in result["task1"] and "holdout" not in result["task2"]
    # Task 1 tunes inside the hold-out's training patients: the scoring hold-out chooses nothing
    holdout, tuning = result["task1"]["holdout"], result["task1"]["tuning"]
    assert set(tuning["train"]) | set(tuning["val"]) == set(holdout["train"])
    assert not set(tuning["val"]) & set(holdout["val"]) and tuning["val"]
    assert "test" not in result["task1"]
    assert len(result["task3"]["test"]) == max(
        1, round(split_cfg.test_fraction * result["task3"]["patients"])
    )


def test_fold_predictions_score_each_fold_on_its_own_patients_and_kfold_models_on_the_test_set():
    from hecktor.data.splits import fold_predictions

    folds = [
        ("fold-0", "kfold", ["A", "B"], ["C"]),
        ("fold-1", "kfold", ["A", "C"], ["B"]),
        ("loco-X", "loco", ["B", "C"], ["A"]),
    ]
    fitted = []

    def fit(fold):
        fitted.append(fold[0])
        offset = len(fitted)  # each fold's own model
        return lambda patients: [offset + ord(p) for p in patients]

    oof, test = fold_predictions(folds, ["T"], fit, "risk")
    assert fitted == ["fold-0", "fold-1", "loco-X"]
    assert oof.to_dict("records") == [
        {"PatientID": "C", "fold": "fold-0", "kind": "kfold", "risk": 1 + ord("C")},
        {"PatientID": "B", "fold": "fold-1", "kind": "kfold", "risk": 2 + ord("B")},
        {"PatientID": "A", "fold": "loco-X", "kind": "loco", "risk": 3 + ord("A")},
    ]
    assert test.to_dict("records") == [  # the leave-one-centre-out model is not a test member
        {"PatientID": "T", "fold": "fold-0", "risk": 1 + ord("T")},
        {"PatientID": "T", "fold": "fold-1", "risk": 2 + ord("T")},
    ]
    only_oof, empty_test = fold_predictions(folds[:1], [], fit, "logit")
    assert only_oof["PatientID"].tolist() == ["C"]
    assert list(empty_test.columns) == ["PatientID", "fold", "logit"] and empty_test.empty
