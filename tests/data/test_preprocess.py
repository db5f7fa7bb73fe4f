import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from hecktor.data import layout
from hecktor.data.preprocess import (
    Geometry,
    PreparedCase,
    StoredCase,
    brain_centre,
    foreground_of,
    load_prepared,
    normalise_ct,
    normalise_pet,
    preprocess,
    save_case,
    to_original_grid,
)
from tests.conftest import make_image


def test_prepared_cases_share_the_configured_shape(prepared_dir, prepare_cfg):
    summary = json.loads((prepared_dir / "summary.json").read_text())
    expected = tuple(
        round(c / s) for c, s in zip(prepare_cfg.crop_mm, prepare_cfg.spacing_mm, strict=True)
    )
    for pid in (p.name for p in prepared_dir.iterdir() if p.is_dir()):
        case = load_prepared(prepared_dir, pid)
        assert case.image.shape == (2, *reversed(expected))
        assert case.image.dtype == np.float32 and case.label.dtype == np.uint8
        assert set(np.unique(case.label).tolist()) <= {0, 1, 2}
    assert summary["patients"] == 8


def test_normalisation():
    ct = np.array([-1000.0, -250.0, 0.0, 250.0, 2000.0])
    from hecktor.config import PrepareConfig

    np.testing.assert_allclose(normalise_ct(ct, PrepareConfig()), [-6, -6, 0, 6, 6])
    pet = np.array([0.0, 0.0, 2.0, 4.0])
    z, mean, std = normalise_pet(pet)
    assert mean == 3.0 and std == 1.0
    np.testing.assert_allclose(z, [-3, -3, -1, 1])


def test_brain_centre_found_from_pet(release_dir, prepare_cfg):
    from hecktor.data import synthetic

    case = layout.scan_release(release_dir).cases[1][0]
    images = layout.read_case(case)
    index = int(case.patient.split("-")[1]) - 1
    from hecktor.config import load_config
    from tests.conftest import ROOT

    truth = synthetic.draw_patient(index, load_config(ROOT / "params.yaml", "tiny").synth).brain
    found = brain_centre(images.ct, images.pet, prepare_cfg)
    # x, y: the brain's centre; z: inside the brain, above its centroid, because the official
    # recipe only looks at the top quarter of the scan.
    assert np.linalg.norm(found[:2] - truth[:2]) < 8.0
    assert 0.0 < found[2] - truth[2] < 80.0


def test_label_keeps_the_lesions(prepared_dir, release_dir):
    for case in layout.scan_release(release_dir).cases[1]:
        truth = sitk.GetArrayFromImage(layout.read_nifti(case.label))
        prepared = load_prepared(prepared_dir, case.patient).label
        for value in (1, 2):
            assert (prepared == value).any() == (truth == value).any() or (
                truth == value
            ).sum() < 30


def _round_trip(ct: sitk.Image, spacing: float) -> None:
    from hecktor.config import PrepareConfig

    array = sitk.GetArrayFromImage(ct)
    pet = make_image(
        np.zeros((4, 4, 4), np.float32), spacing=(100, 100, 100), origin=(-150, -150, -150)
    )
    cfg = PrepareConfig(
        spacing_mm=(spacing,) * 3, crop_mm=(160.0, 160.0, 160.0), interpolator="linear"
    )
    label = sitk.GetImageFromArray(array.astype(np.uint8))
    label.CopyInformation(ct)
    prepared = preprocess(layout.RawCase("P-1", ct, pet, label), cfg)
    back = to_original_grid(
        prepared.label, Geometry.from_dict(prepared.meta["grid"]), Geometry.of(ct)
    )
    assert back.GetSize() == ct.GetSize()
    assert back.GetSpacing() == ct.GetSpacing()
    assert back.GetOrigin() == ct.GetOrigin()
    assert back.GetDirection() == ct.GetDirection()
    return sitk.GetArrayFromImage(back), array


@pytest.mark.parametrize(
    "direction",
    [np.eye(3), np.diag([-1.0, -1.0, 1.0]), np.array([[0.0, 1, 0], [1, 0, 0], [0, 0, -1]])],
    ids=["identity", "flipped-xy", "permuted"],
)
def test_round_trip_is_exact_on_an_aligned_grid(direction):
    rng = np.random.default_rng(0)
    array = np.zeros((20, 24, 28), np.uint8)
    array[5:12, 6:15, 8:20] = 1
    array[14:17, 3:7, 3:9] = 2
    array[rng.random(array.shape) < 0.01] = 2
    ct = make_image(array, spacing=(2, 2, 2), origin=(-10.0, 6.0, 4.0), direction=direction)
    back, truth = _round_trip(ct, 2.0)
    np.testing.assert_array_equal(back, truth)


def test_round_trip_with_rotation_and_resampling_keeps_geometry_and_shape():
    angle = np.deg2rad(7)
    rot = np.array(
        [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    )
    zz, yy, xx = np.mgrid[:24, :40, :40]
    array = (((xx - 20) ** 2 + (yy - 20) ** 2) / 100 + ((zz - 12) ** 2) / 25 < 1).astype(np.uint8)
    ct = make_image(array, spacing=(1.0, 1.0, 2.0), origin=(-20.0, -20.0, -24.0), direction=rot)
    back, truth = _round_trip(ct, 1.5)
    dice = 2 * np.logical_and(back, truth).sum() / (back.sum() + truth.sum())
    assert dice > 0.9


def test_geometry_serialises():
    g = Geometry(
        (3, 4, 5), (1.0, 2.0, 3.0), (0.5, -1.0, 2.0), (0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
    )
    assert Geometry.from_dict(json.loads(json.dumps(g.to_dict()))) == g
    with pytest.raises(ValueError, match="does not match grid size"):
        g.image(np.zeros((3, 4, 5), np.uint8))


def test_clinical_and_index_written(prepared_dir):
    import pandas as pd

    cases = pd.read_csv(prepared_dir / "cases.csv")
    clinical = pd.read_csv(prepared_dir / "clinical.csv")
    assert len(cases) == 8 and cases["has_label"].all()
    assert {"PatientID", "CenterID", "Age", "HPV Status", "RFS", "Relapse"} <= set(clinical.columns)
    assert set(clinical["PatientID"]) <= set(cases["PatientID"])


def test_a_stored_case_reads_back_a_region_as_prepared(tmp_path):
    """float16 images and uint8 labels in compressed chunks: a region reads back exactly (the
    image was rounded to float16 when prepared), and each class's foreground is stored."""
    rng = np.random.default_rng(0)
    image = rng.normal(size=(2, 70, 40, 30)).astype(np.float16).astype(np.float32)
    label = np.zeros((70, 40, 30), np.uint8)
    label[10:14, 5:9, 3:6] = 1
    label[60, 30, 20] = 2
    save_case(tmp_path / "P", PreparedCase(image, label, {"grid": {}}))
    stored = StoredCase(tmp_path / "P")
    box = (slice(5, 69), slice(0, 40), slice(7, 30))
    region, labels = stored.read(box)
    np.testing.assert_array_equal(region, image[(slice(None), *box)])
    np.testing.assert_array_equal(labels, label[box])
    np.testing.assert_array_equal(stored.whole_label(), label)
    found = stored.foreground()
    assert found.shape == (70, 40, 30) and len(found.of(1)) == 4 * 4 * 3
    np.testing.assert_array_equal(found.labelled(), np.flatnonzero(label))
    assert np.unravel_index(found.of(2), label.shape) == (60, 30, 20)
    whole = load_prepared(tmp_path, "P")
    assert whole.image.dtype == np.float32 and whole.label.dtype == np.uint8
    with pytest.raises(ValueError, match="no prepared image; prepare the release again"):
        StoredCase(tmp_path / "missing")


def test_foreground_holds_every_voxel_of_each_class_and_none_without_labels():
    label = np.zeros((5, 6, 7), np.uint8)
    label[1:3, 2, :] = 1
    label[4, 5, 6] = 2
    found = foreground_of(label)
    for value in (1, 2):
        np.testing.assert_array_equal(found.of(value), np.flatnonzero(label == value))
    assert foreground_of(np.zeros((3, 3, 3), np.uint8)).labelled().size == 0


@pytest.mark.parametrize("inside", [True, False])
def test_a_box_leaving_the_scan_moves_back_inside_it_as_the_official_script_does(inside):
    from hecktor.config import PrepareConfig
    from hecktor.data.preprocess import crop_grid

    # a 100 x 60 x 200 mm scan (x, y, z) with the brain near its top, at z = 180
    pet = np.zeros((200, 60, 100), np.float32)
    pet[170:190, 20:40, 40:60] = 10.0
    ct = make_image(np.zeros_like(pet))
    cfg = PrepareConfig(spacing_mm=(2.0, 2.0, 2.0), crop_mm=(40.0, 80.0, 120.0),
                        interpolator="linear", inside_scan=inside)  # fmt: skip
    grid, centre = crop_grid(ct, make_image(pet), cfg)
    lo = np.array(grid.origin)
    hi = lo + (np.array(grid.size) - 1) * np.array(grid.spacing)
    assert grid.size == (20, 40, 60)
    assert abs(centre[2] - 179.5) < 2  # the box is centred on the brain, 60 mm either side
    if inside:
        assert hi[2] <= 199.0 and lo[2] >= 0  # moved down, into the scan
        assert abs((lo[0] + hi[0]) / 2 - centre[0]) < 2  # x: inside already, not moved
        assert lo[1] < 0 and hi[1] > 59  # y: the scan is smaller than the box: padded both sides
    else:
        assert hi[2] > 230  # left where it is: padded above the scan


def test_prepare_on_a_full_disk_names_the_disk_and_leaves_nothing(release_dir, tmp_path):
    """Blosc2 says only "Error while creating the NDArray" when the disk fills: the command must
    say the disk is full, exit 2, and leave no partial output or temporary behind."""
    disk = tmp_path / "disk"
    disk.mkdir()
    shell = (
        'mount -t tmpfs -o size=256k tmpfs "$0" || exit 99; "$1" -m hecktor.cli "${@:2}"; '
        'code=$?; echo "left: $(ls -A "$0")"; exit $code'
    )
    command = ["unshare", "-rm", "bash", "-c", shell, str(disk), sys.executable,
               "prepare", "--release", str(release_dir), "--out", str(disk / "prepared"),
               "--workers", "1"]  # fmt: skip
    try:
        done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    except FileNotFoundError:
        pytest.skip("no unshare here")
    if done.returncode in (1, 99) and "hecktor" not in done.stderr:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"no space left on the disk ({disk}" in done.stderr
    assert done.stdout.strip() == "left:"  # no partial output, no temporary, no lock
