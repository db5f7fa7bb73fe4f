"""Task 2's inputs: the grid and box its settings ask for, read alike in training and predict."""

import numpy as np
import pandas as pd
import pytest

from hecktor.config import override
from hecktor.data.preprocess import load_prepared, prepared_grid
from hecktor.networks import rfs_input
from hecktor.tasks.rfs import RFSTask


@pytest.mark.parametrize(("pool", "box_mm"), [(1, None), (2, None), (2, (36.0, 30.0, 42.0))])
def test_training_reads_the_input_predict_builds_from_the_whole_volume(
    project_cfg, tmp_path, pool, box_mm
):
    prepared = project_cfg.paths.prepared
    patients = sorted(p.name for p in prepared.iterdir() if p.is_dir())[:3]
    pd.DataFrame({"PatientID": patients, "hpv_pred": 1.0}).to_csv(tmp_path / "inputs.csv")
    cfg = override(project_cfg.rfs, input_pool=pool, input_box_mm=box_mm)
    task = RFSTask(cfg, prepared, tmp_path, mode="gt")
    spacing, shape = prepared_grid(prepared)
    for patient in patients:
        case = load_prepared(prepared, patient)
        read = task.image(patient, "gt")  # only the box is read from the stored case
        whole = rfs_input(
            cfg, case.label, spacing, lambda box, c=case: c.image[(slice(None), *box)]
        )
        np.testing.assert_array_equal(read, whole)
        size = (
            shape
            if box_mm is None
            else [round(b / s) for b, s in zip(box_mm, spacing, strict=True)]
        )
        assert read.shape == (4, *(n // pool for n in size))
        assert read[2:].sum() > 0  # the lesions are inside


def test_inputs_are_kept_in_memory_up_to_the_budget(project_cfg, tmp_path):
    prepared = project_cfg.paths.prepared
    patients = sorted(p.name for p in prepared.iterdir() if p.is_dir())[:3]
    pd.DataFrame({"PatientID": patients, "hpv_pred": 1.0}).to_csv(tmp_path / "inputs.csv")
    pooled = override(project_cfg.rfs, input_pool=2)  # block averages, kept exactly in float16
    one = RFSTask(pooled, prepared, tmp_path, mode="gt").image(patients[0], "gt").nbytes
    cfg = override(pooled, cache_gb=0.75 * one / 1e9)  # room for one, kept in float16
    task = RFSTask(cfg, prepared, tmp_path, mode="gt")
    first = [task.image(p, "gt") for p in patients]
    again = [task.image(p, "gt") for p in patients]
    assert list(task.cache) == [(patients[0], "gt")]
    for a, b in zip(first, again, strict=True):
        assert b.dtype == np.float32
        np.testing.assert_array_equal(a, b)  # kept or read again, the same input
    uncached = RFSTask(override(cfg, cache_gb=0), prepared, tmp_path, mode="gt")
    uncached.image(patients[0], "gt")
    assert not uncached.cache


def test_with_loader_workers_the_inputs_are_read_before_they_start(project_cfg, tmp_path):
    """Workers start as copies of the main process: what it holds, they hold."""
    prepared = project_cfg.paths.prepared
    patients = sorted(p.name for p in prepared.iterdir() if p.is_dir())[:3]
    pd.DataFrame({"PatientID": patients, "hpv_pred": 1.0}).to_csv(tmp_path / "inputs.csv")
    train = project_cfg.rfs.train.model_copy(update={"num_workers": 2})
    task = RFSTask(override(project_cfg.rfs, train=train), prepared, tmp_path, mode="gt")
    task.train_dataset(patients)
    assert sorted(task.cache) == [(p, "gt") for p in patients]
