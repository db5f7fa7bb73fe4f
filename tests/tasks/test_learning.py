"""Each task's network learns through its own task's loss: it fits a few training patients.

A few hundred full-batch steps on the tiny prepared cohort, scored the way the pipeline scores
(the task's own prediction code and the challenge metrics). A sign flipped anywhere between the loss
and the figure (the Cox loss's risk, an HPV label turned over, a label map's classes swapped) leaves
the network fitting the opposite and fails here, where the two-epoch pipeline tests would pass.
"""

from contextlib import nullcontext

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from hecktor import metrics
from hecktor.config import override
from hecktor.data.preprocess import StoredCase
from hecktor.labels import GTVN, GTVP
from hecktor.prediction import hpv_features, hpv_logit
from hecktor.tasks.hpv import HPVTask
from hecktor.tasks.rfs import RFSTask
from hecktor.tasks.seg import SegmentationTask

CPU = torch.device("cpu")


def _patients(cfg) -> list[str]:
    return sorted(p.name for p in cfg.paths.prepared.iterdir() if p.is_dir())


def _fit(task, model, batch: dict, steps: int, lr: float) -> None:
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        task.loss(model, batch, CPU).backward()
        optimizer.step()
    model.eval()


def _blobs(count: int, size: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(count, 2, size^3) CT and PET with a bright primary and a dimmer node at random places,
    and their (count, 1, size^3) label maps: a problem any working network fits in a few steps."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(size)] * 3, indexing="ij"))
    images = rng.normal(0, 0.3, (count, 2, size, size, size)).astype(np.float32)
    labels = np.zeros((count, 1, size, size, size), np.int64)
    for i in range(count):
        for cls, radius, uptake in ((GTVP, 3.5, 3.0), (GTVN, 2.5, 1.5)):
            centre = rng.uniform(radius + 1, size - radius - 1, 3)
            inside = ((grid - centre[:, None, None, None]) ** 2).sum(0) <= radius**2
            labels[i, 0][inside] = cls
            images[i, 1][inside] += uptake
            images[i, 0][inside] += 0.5
    return torch.as_tensor(images), torch.as_tensor(labels)


def test_task1_network_fits_its_training_patients(project_cfg):
    seg = override(project_cfg.seg, base_filters=8, max_filters=16)
    task = SegmentationTask(seg, project_cfg.paths.prepared)
    image, label = _blobs(4)
    torch.manual_seed(0)
    model = task.build_model()
    _fit(task, model, {"image": image, "label": label}, steps=80, lr=1e-2)
    with torch.no_grad():
        predicted = np.stack([task.predict(model, np.asarray(i), CPU, nullcontext) for i in image])
    for cls in (GTVP, GTVN):
        fitted = metrics.dice(predicted == cls, label[:, 0].numpy() == cls)
        assert fitted > 0.7, f"class {cls}: training Dice {fitted:.3f}"


def test_task3_network_fits_its_training_patients(project_cfg):
    cfg = project_cfg
    task = HPVTask(override(cfg.hpv, init_from_seg=False), cfg.seg, cfg.paths.prepared)
    image, label = _blobs(8, seed=1)
    hpv = torch.tensor([1.0, 0.0] * 4)
    image[hpv == 0, 1] *= 1.5  # HPV-negative lesions take up more: the image tells them apart
    task.setup(list(task.table.index))
    clinical = torch.zeros(8, task.encoder.width)  # no clinical help: the image must do it
    torch.manual_seed(0)
    model = task.build_model()
    batch = {"image": image, "label": label, "clinical": clinical, "hpv": hpv,
             "has_label": torch.ones(8, dtype=torch.bool)}  # fmt: skip
    _fit(task, model, batch, steps=100, lr=3e-3)
    with torch.no_grad():
        logits = [hpv_logit(model, hpv_features(model, np.asarray(i), CPU, nullcontext), c, CPU,
                            nullcontext) for i, c in zip(image, clinical.numpy(), strict=True)]  # fmt: skip
    assert metrics.auc(hpv.numpy(), np.asarray(logits)) > 0.95


@pytest.mark.parametrize("fusion", ["concat", "additive"])
def test_task2_network_fits_its_training_patients(project_cfg, tmp_path, fusion):
    cfg = project_cfg
    patients = [
        p for p in _patients(cfg) if StoredCase(cfg.paths.prepared / p).whole_label() is not None
    ]
    pd.DataFrame({"PatientID": patients, "hpv_pred": 1.0}).to_csv(tmp_path / "inputs.csv")
    (tmp_path / "masks").mkdir()  # validation reads predicted inputs: here, the true masks
    for p in patients:
        np.save(tmp_path / "masks" / f"{p}.npy", StoredCase(cfg.paths.prepared / p).whole_label())
    rfs = override(cfg.rfs, fusion=fusion, lesion_features=fusion == "additive", dropout=0.0)
    task = RFSTask(rfs, cfg.paths.prepared, tmp_path, mode="gt")
    # every patient relapses, one after the other: any ranking the network learns is checkable
    task.table.loc[patients, "RFS"] = 100.0 * np.arange(1, len(patients) + 1)
    task.table.loc[patients, "Relapse"] = 1
    task.setup(patients)
    torch.manual_seed(0)
    model = task.build_model()
    data = task.train_dataset(patients)
    batch = {k: torch.stack([data[i][k] for i in range(len(data))])
             for k in ("image", "clinical", "time", "event")}  # fmt: skip
    _fit(task, model, batch, steps=150, lr=3e-3)
    with torch.no_grad():
        scores = task.validate(model, patients, CPU, nullcontext)
    assert scores["c_index"] > 0.9


def test_the_additive_fusion_starts_as_the_clinical_baseline(project_cfg):
    """Before its first step the network's HPV logit is the clinical logistic regression's, fitted
    on the same training patients (the image term starts at zero)."""
    cfg = project_cfg
    hpv = override(cfg.hpv, init_from_seg=False, fusion="additive")
    task = HPVTask(hpv, cfg.seg, cfg.paths.prepared)
    patients = _patients(cfg)
    task.table.loc[patients, "HPV Status"] = [1, 0] * (len(patients) // 2)
    task.setup(patients)
    torch.manual_seed(0)
    model = task.build_model().eval()
    task.warm_start(model)
    x = task.encoder.transform(task.table.loc[patients])
    expected = LogisticRegression(class_weight="balanced", max_iter=2000)
    expected = expected.fit(x, task.labels(patients)).decision_function(x)
    with torch.no_grad():
        logits = task.logits(model, patients, CPU, nullcontext)
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)
