"""What Task 2's derived inputs are keyed by: the weights the Task 1 and Task 3 models load."""

import hashlib
import json

import pandas as pd
import pytest

from hecktor.checkpoints import FINAL
from hecktor.data.folds import load_splits
from hecktor.derive import _sources, best_single_fold
from hecktor.tasks import task_folds


def _finished(folder, weights: str, data: bytes) -> None:
    """A fold as training leaves it: its weights and the record that names them."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / weights).write_bytes(data)
    (folder / FINAL).write_text(json.dumps({"weights": weights, "key": "k",
                                            "sha256": hashlib.sha256(data).hexdigest()}))  # fmt: skip


def test_inputs_are_keyed_by_the_weights_the_models_load(project_cfg):
    models = project_cfg.paths.models
    holdout = load_splits(project_cfg.paths.splits)["task1"]["holdout"]
    _finished(models / "seg" / "holdout", "best.pt", b"seg best")
    (models / "seg" / "summary.json").write_text(json.dumps({"folds": {"holdout": {}}}))
    hpv_folds = [name for name, *_ in task_folds(project_cfg, "hpv")[0]]
    for name in hpv_folds:
        _finished(models / "hpv" / name, "best.pt", f"{name} best".encode())

    seg_folds, key = _sources(project_cfg)
    assert [(n, p.name) for n, _, p in seg_folds] == [("holdout", "best.pt")]
    assert seg_folds[0][1] == set(holdout["train"])
    assert _sources(project_cfg)[1] == key

    _finished(models / "hpv" / "fold-0", "swa.pt", b"hpv after SWA")  # what the models load
    with_swa = _sources(project_cfg)[1]
    assert with_swa != key
    (models / "hpv" / "fold-0" / "best.pt").write_bytes(b"hpv best, retrained")  # not loaded
    assert _sources(project_cfg)[1] == with_swa
    (models / "hpv" / "fold-9").mkdir()  # a folder of no configured fold is not a source
    (models / "hpv" / "fold-9" / "best.pt").write_bytes(b"half-trained")
    (models / "hpv" / "fold-9" / FINAL).write_text(json.dumps({"weights": "best.pt"}))
    assert _sources(project_cfg)[1] == with_swa
    _finished(models / "seg" / "holdout", "swa.pt", b"seg after SWA")
    seg_folds, seg_swa = _sources(project_cfg)
    assert seg_folds[0][2].name == "swa.pt" and seg_swa != with_swa
    (models / "hpv" / hpv_folds[-1] / FINAL).unlink()  # a configured fold still training
    with pytest.raises(ValueError, match="no finished training"):
        _sources(project_cfg)


def test_the_single_task3_fold_is_the_best_classifier_of_its_own_validation_patients():
    truth = pd.Series({"a": 1.0, "b": 0.0, "c": 1.0, "d": 0.0, "e": 1.0, "f": None})
    oof = pd.DataFrame({
        "PatientID": ["a", "b", "c", "d", "e", "f"],
        "fold": ["fold-0", "fold-0", "fold-1", "fold-1", "fold-2", "fold-2"],
        "logit": [-1.0, 1.0, 2.0, -2.0, 3.0, -9.0],  # fold-1 right on both; f's label unknown
    })  # fmt: skip
    assert best_single_fold(oof, truth) == ("fold-1", 1.0)
    oof.loc[oof["fold"] == "fold-0", "logit"] = [1.0, -1.0]  # now as good: the first wins
    assert best_single_fold(oof, truth) == ("fold-0", 1.0)
