import numpy as np
import pandas as pd
import SimpleITK as sitk

from hecktor.config import SynthConfig
from hecktor.data import layout, synthetic
from hecktor.data.layout import read_nifti


def test_release_is_valid_and_in_the_official_layout(release_dir):
    release = layout.scan_release(release_dir)
    assert release.problems == []
    problems: list = []
    layout.read_tables(release, problems)
    assert problems == []
    for case in release.cases[1]:
        images = layout.read_case(case)  # raises on any problem
        assert images.label is not None


def test_same_seed_same_cohort(tmp_path, synth_cfg):
    cfg = synth_cfg.model_copy(update={"patients": 3})
    synthetic.synthesize(cfg, tmp_path / "a", tmp_path / "a.csv")
    synthetic.synthesize(cfg, tmp_path / "b", tmp_path / "b.csv")
    for path in sorted((tmp_path / "a").rglob("*.nii.gz")):
        twin = tmp_path / "b" / path.relative_to(tmp_path / "a")
        assert np.array_equal(
            sitk.GetArrayFromImage(read_nifti(path)), sitk.GetArrayFromImage(read_nifti(twin))
        )
    assert (tmp_path / "a.csv").read_text() == (tmp_path / "b.csv").read_text()


def test_patients_do_not_depend_on_cohort_size(synth_cfg):
    small = [synthetic.draw_patient(i, synth_cfg) for i in range(3)]
    large = [
        synthetic.draw_patient(i, synth_cfg.model_copy(update={"patients": 50})) for i in range(3)
    ]
    assert [p.log_hazard for p in small] == [p.log_hazard for p in large]


def test_other_seed_other_cohort(synth_cfg):
    a = synthetic.draw_patient(0, synth_cfg)
    b = synthetic.draw_patient(0, synth_cfg.model_copy(update={"seed": synth_cfg.seed + 1}))
    assert a.log_hazard != b.log_hazard


def test_pet_and_ct_grids_differ(release_dir):
    case = layout.scan_release(release_dir).cases[1][0]
    ct, pet = read_nifti(case.ct), read_nifti(case.pet)
    assert ct.GetSpacing() != pet.GetSpacing()
    assert ct.GetOrigin() != pet.GetOrigin()
    assert ct.GetSize() != pet.GetSize()
    assert layout.overlap_box(ct, pet) is not None


def test_cohort_statistics_are_realistic():
    cfg = SynthConfig(patients=400)
    patients = [synthetic.draw_patient(i, cfg) for i in range(400)]
    hpv = np.mean([p.hpv for p in patients])
    censored = 1 - np.mean([p.relapse for p in patients])
    assert 0.84 <= hpv <= 0.94  # HECKTOR 2025: 90 % HPV positive
    assert 0.12 <= censored <= 0.30  # about 20 % censored
    assert 0.01 <= np.mean([p.site is None for p in patients]) <= 0.10  # a few without primary
    nodes = [len(p.nodes) for p in patients]
    assert min(nodes) == 0 and max(nodes) >= 4
    radii = [r for p in patients for _, r, _ in p.nodes]
    assert any(4 / 3 * np.pi * r**3 < 100 for r in radii)  # some nodes under 100 mm^3
    touching = [
        (a, b) for p in patients for a, b in zip(p.nodes, p.nodes[1:], strict=False)
        if np.linalg.norm(a[0] - b[0]) <= (a[1] + b[1]) * 1.01
    ]  # fmt: skip
    assert touching
    assert np.mean([p.direction != tuple(np.eye(3).ravel()) for p in patients]) > 0.05
    assert len({p.centre for p in patients}) == 7


def test_centres_differ(release_dir):
    rows = []
    for case in layout.scan_release(release_dir).cases[1]:
        rows.append((layout.centre_of(case.patient), read_nifti(case.ct).GetSpacing()[0]))
    by_centre = (
        pd.DataFrame(rows, columns=["centre", "spacing"]).groupby("centre")["spacing"].first()
    )
    assert by_centre.nunique() > 1


def test_hpv_depends_on_clinical_and_image_features():
    cfg = SynthConfig(patients=600)
    patients = [synthetic.draw_patient(i, cfg) for i in range(600)]
    prob = np.array([p.hpv_probability for p in patients])
    smoker = np.array([p.smoker for p in patients], bool)
    larynx = np.array([p.site == "larynx" for p in patients])
    assert prob[smoker].mean() < prob[~smoker].mean()
    assert prob[larynx].mean() < prob[~larynx].mean()


def test_oracle_is_outside_the_release(tmp_path, release_dir):
    oracle = pd.read_csv(release_dir.parent / "oracle.csv")
    assert {"PatientID", "log_hazard", "hpv_probability"} <= set(oracle.columns)
    assert not list(release_dir.rglob("*oracle*"))
    table = pd.read_csv(release_dir / "Task 2" / layout.TASK_CSV[2])
    assert set(table["PatientID"]) <= set(oracle["PatientID"])


def test_true_log_hazard_ranks_outcomes_well_but_not_perfectly():
    from hecktor.metrics import c_index

    cfg = SynthConfig(patients=500)
    patients = [synthetic.draw_patient(i, cfg) for i in range(500)]
    value = c_index(
        np.array([p.rfs_days for p in patients]),
        np.array([p.relapse for p in patients]),
        np.array([p.log_hazard for p in patients]),
    )
    assert 0.62 < value < 0.85  # learnable, and not trivial
