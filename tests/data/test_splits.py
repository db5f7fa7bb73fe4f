import warnings
from collections import Counter

import pandas as pd
import pytest

from hecktor.data import splits
from hecktor.data.folds import load_splits
from hecktor.data.preprocess import StoredCase


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
    assert (result["folds"], result["seed"]) == (split_cfg.folds, split_cfg.seed)
    assert "test" in result["task2"]  # Task 2 keeps a test set too
    assert splits.make_splits(prepared_dir, split_cfg) == result  # seeded: the same again
    labels = splits.task_labels(prepared_dir)
    for pid, label in zip(labels[1]["PatientID"], labels[1]["label"], strict=True):
        has_nodes = (StoredCase(prepared_dir / pid).whole_label() == 2).any()
        assert label == int(has_nodes), pid  # Task 1 stratifies by the presence of nodes
    reseeded = splits.make_splits(
        prepared_dir, split_cfg.model_copy(update={"seed": split_cfg.seed + 1})
    )
    assert reseeded["task1"]["holdout"] != result["task1"]["holdout"]
    # the folds stratify by the task's label: those of kfold on its patients, centres and labels
    task1 = labels[1]
    assert result["task1"]["kfold"] == splits.kfold(
        task1["PatientID"].tolist(), task1["CenterID"].tolist(),
        [str(v) for v in task1["label"]], split_cfg.folds, split_cfg.seed)  # fmt: skip
    # no test set where none is asked for (the paper profile's setting)
    untested = splits.make_splits(prepared_dir, split_cfg.model_copy(update={"test_fraction": 0.0}))
    assert "test" not in untested["task2"] and "test" not in untested["task3"]


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


# --------------------------------------------------------------------------- found by mutation


def test_the_holdout_is_seeded_and_keeps_each_centre_and_label_in_proportion():
    patients = [f"{c}-{i:02d}" for c in "AB" for i in range(10)]
    centres = [p[0] for p in patients]
    labels = [i % 2 for i in range(20)]
    first = splits.holdout(patients, centres, labels, 0.2, seed=5)
    assert first == splits.holdout(patients, centres, labels, 0.2, seed=5)
    others = [splits.holdout(patients, centres, labels, 0.2, seed=s)["val"] for s in range(6, 12)]
    assert any(v != first["val"] for v in others)
    for fold in [first["val"], *others]:  # 4 held out: one of each centre and label
        strata = sorted((p[0], labels[patients.index(p)]) for p in fold)
        assert strata == [("A", 0), ("A", 1), ("B", 0), ("B", 1)]


def test_as_many_patients_as_folds_and_two_centres_are_enough():
    folds = splits.kfold(["A-1", "A-2", "A-3"], ["A"] * 3, [0, 1, 0], 3, seed=0)
    assert sorted(v for f in folds for v in f["val"]) == ["A-1", "A-2", "A-3"]
    loco = splits.leave_one_centre_out(["A-1", "B-1", "B-2"], ["A", "B", "B"])
    assert [f["val"] for f in loco] == [["A-1"], ["B-1", "B-2"]]
    assert loco[0]["train"] == ["B-1", "B-2"]


def test_a_rare_centre_falls_back_to_its_label_before_the_common_stratum():
    keys = splits.strata(["A", "A", "B", "C", "C"], ["0", "1|x", "1|x", "0", "0"], folds=2)
    assert keys == ["*|*", "*|1|x", "*|1|x", "C|0", "C|0"]  # labels may hold a "|"
    assert splits.strata(["A", "A", "B"], [0, 0, 0], folds=2) == ["A|0", "A|0", "*|*"]


def test_strata_and_centres_need_one_value_per_patient():
    with pytest.raises(ValueError):
        splits.strata(["A", "B"], [0], folds=2)
    with pytest.raises(ValueError):
        splits.leave_one_centre_out(["A-1"], ["A", "B"])


def test_a_small_holdout_still_takes_one_of_each_centre_and_label():
    """8 patients, 2 of each centre and label: half held out is one of each, whatever the seed."""
    patients = [f"{c}-{i}" for c in "AB" for i in range(4)]
    labels = [0, 0, 1, 1] * 2
    for seed in range(5):
        val = splits.holdout(patients, [p[0] for p in patients], labels, 0.5, seed)["val"]
        assert sorted((p[0], labels[patients.index(p)]) for p in val) == [
            ("A", 0), ("A", 1), ("B", 0), ("B", 1)]  # fmt: skip


def test_a_rare_class_in_kfold_is_expected_not_warned_about():
    patients = [f"A-{i}" for i in range(9)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        splits.kfold(patients, ["A"] * 9, [0] * 7 + [1] * 2, 3, seed=0)


def test_task1_stratifies_only_its_labelled_cases(tmp_path, prepared_dir):
    for case in prepared_dir.iterdir():
        (tmp_path / case.name).symlink_to(case)
    (tmp_path / "cases.csv").unlink()
    cases = pd.read_csv(prepared_dir / "cases.csv")
    unlabelled = cases.loc[cases["task1"], "PatientID"].iloc[0]
    cases.loc[cases["PatientID"] == unlabelled, "has_label"] = False
    cases.to_csv(tmp_path / "cases.csv", index=False)
    labels = splits.task_labels(tmp_path)
    assert unlabelled not in set(labels[1]["PatientID"])
    assert len(labels[1]) == int(cases["task1"].sum()) - 1
    clinical = pd.read_csv(prepared_dir / "clinical.csv")  # a release without HPV status
    (tmp_path / "clinical.csv").unlink()
    clinical.drop(columns=["HPV Status"]).to_csv(tmp_path / "clinical.csv", index=False)
    labels = splits.task_labels(tmp_path)
    assert labels[3].empty and list(labels[3].columns)[-1] == "label"


def test_fold_predictions_keep_their_columns_when_empty_and_refuse_a_short_answer():
    oof, test = splits.fold_predictions([], ["T"], lambda fold: None, "risk")
    assert list(oof.columns) == ["PatientID", "fold", "kind", "risk"] and oof.empty
    assert list(test.columns) == ["PatientID", "fold", "risk"] and test.empty
    folds = [("fold-0", "kfold", ["A"], ["B", "C"])]
    with pytest.raises(ValueError):  # one value for two validation patients
        splits.fold_predictions(folds, [], lambda fold: lambda patients: [0.0], "risk")
    with pytest.raises(ValueError):  # two values for the one test patient
        splits.fold_predictions(folds, ["T"], lambda fold: lambda patients: [0.0] * 2, "risk")
