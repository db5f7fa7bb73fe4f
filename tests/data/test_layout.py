import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from hecktor import io
from hecktor.data import layout
from hecktor.data.layout import InputError
from hecktor.data.preprocess import prepare_release
from tests.conftest import make_image


def _first(release, task=1):
    return layout.scan_release(release).cases[task][0]


def test_scan_finds_all_tasks(release_dir):
    release = layout.scan_release(release_dir)
    assert release.problems == []
    assert len(release.cases[1]) == 8
    assert all(c.label is not None for c in release.cases[1])
    assert 0 < len(release.cases[2]) <= 8 and 0 < len(release.cases[3]) <= 8
    assert set(release.tables) == {1, 2, 3}


def test_tables_parse_official_columns(release_dir):
    release = layout.scan_release(release_dir)
    problems: list = []
    tables = layout.read_tables(release, problems)
    assert problems == []
    t2, t3 = tables[2], tables[3]
    assert set(layout.TASK_COLUMNS[2]) <= set(t2.columns)
    assert set(t2["Relapse"].dropna().unique()) <= {0.0, 1.0}
    assert set(t3["HPV Status"].unique()) <= {0.0, 1.0}
    assert set(t2["Gender"].unique()) <= {0.0, 1.0}


@pytest.mark.parametrize(
    ("raw", "kind", "expected"),
    [
        ("M", "gender", 1.0), ("F", "gender", 0.0), ("1", "gender", 1.0), ("0", "gender", 0.0),
        ("", "gender", None), ("Mx", "mstage", "Mx"), ("m1", "mstage", "M1"), ("M0", "mstage", "M0"),
        ("63", "nonneg", 63.0), ("1.0", "binary", 1.0), ("nan", "binary", None),
    ],
)  # fmt: skip
def test_parse_accepts_both_spellings(raw, kind, expected):
    assert layout._parse(raw, kind) == expected


def _assert_rejected(release, out, patient, filename, message):
    with pytest.raises(InputError) as info:
        prepare_release(release, out, _cfg())
    text = str(info.value)
    assert patient in text and filename in text and message in text, text
    assert not out.exists(), "nothing may be written when the input is bad"
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]
    assert leftovers == []
    return info.value


def _cfg():
    from hecktor.config import load_config
    from tests.conftest import ROOT

    return load_config(ROOT / "params.yaml", "tiny").prepare.model_copy(update={"workers": 1})


def test_corrupt_file_is_named(release_copy, tmp_path):
    case = _first(release_copy)
    data = case.pet.read_bytes()
    case.pet.write_bytes(data[: len(data) // 3])
    _assert_rejected(
        release_copy, tmp_path / "out", case.patient, case.pet.name, "cannot read image"
    )


def test_missing_modality_is_named(release_copy, tmp_path):
    case = _first(release_copy)
    case.ct.unlink()
    _assert_rejected(release_copy, tmp_path / "out", case.patient, case.ct.name, "CT file missing")


def test_ct_pet_without_overlap_is_named(release_copy, tmp_path):
    case = _first(release_copy)
    pet = sitk.ReadImage(str(case.pet))
    pet.SetOrigin(tuple(o + 5000.0 for o in pet.GetOrigin()))
    sitk.WriteImage(pet, str(case.pet))
    _assert_rejected(
        release_copy, tmp_path / "out", case.patient, case.pet.name, "does not overlap"
    )


def test_label_values_outside_range_are_named(release_copy, tmp_path):
    case = _first(release_copy)
    label = sitk.ReadImage(str(case.label))
    array = sitk.GetArrayFromImage(label)
    array[0, 0, 0] = 3
    bad = sitk.GetImageFromArray(array)
    bad.CopyInformation(label)
    sitk.WriteImage(bad, str(case.label))
    _assert_rejected(
        release_copy, tmp_path / "out", case.patient, case.label.name, "label values [3]"
    )


def test_label_off_the_ct_grid_is_named(release_copy, tmp_path):
    case = _first(release_copy)
    label = sitk.ReadImage(str(case.label))
    label.SetSpacing(tuple(s * 1.5 for s in label.GetSpacing()))
    sitk.WriteImage(label, str(case.label))
    _assert_rejected(
        release_copy, tmp_path / "out", case.patient, case.label.name, "not on the CT grid"
    )


def test_csv_missing_column_is_named(release_copy, tmp_path):
    path = release_copy / "Task 2" / layout.TASK_CSV[2]
    pd.read_csv(path).drop(columns=["RFS"]).to_csv(path, index=False)
    _assert_rejected(
        release_copy, tmp_path / "out", "(all patients)", path.name, "missing column(s) ['RFS']"
    )


def test_csv_unreadable_value_is_named(release_copy, tmp_path):
    path = release_copy / "Task 3" / layout.TASK_CSV[3]
    frame = pd.read_csv(path, dtype=str)
    patient = frame.loc[0, "PatientID"]
    frame.loc[0, "Age"] = "sixty"
    frame.to_csv(path, index=False)
    _assert_rejected(release_copy, tmp_path / "out", patient, path.name, "unreadable value 'sixty'")


def test_every_problem_is_reported(release_copy, tmp_path):
    cases = layout.scan_release(release_copy).cases[1]
    cases[0].ct.unlink()
    cases[1].pet.write_bytes(b"not an image")
    err = _assert_rejected(
        release_copy, tmp_path / "out", cases[0].patient, cases[0].ct.name, "missing"
    )
    patients = {p.patient for p in err.problems}
    assert {cases[0].patient, cases[1].patient} <= patients


def test_table_and_folders_must_agree(release_copy, tmp_path):
    path = release_copy / "Task 3" / layout.TASK_CSV[3]
    frame = pd.read_csv(path, dtype=str)
    dropped = frame.loc[0, "PatientID"]
    frame.iloc[1:].to_csv(path, index=False)
    _assert_rejected(release_copy, tmp_path / "out", dropped, path.name, "not listed in the table")


def test_existing_output_survives_a_failed_run(release_copy, tmp_path):
    out = tmp_path / "out"
    io.mark_dir(out, "prepare")  # an earlier prepare's output, which a failed run must keep
    (out / "keep.txt").write_text("earlier result")
    _first(release_copy).ct.unlink()
    with pytest.raises(InputError):
        prepare_release(release_copy, out, _cfg())
    assert (out / "keep.txt").read_text() == "earlier result"


def test_centre_from_patient_id():
    assert layout.centre_of("CHUM-001") == "CHUM"
    assert layout.centre_of("MDA-123") == "MDA"


# --------------------------------------------------------------------------- container


def _container_images():
    ct = make_image(np.full((6, 8, 8), 40, np.int16), spacing=(2, 2, 3), origin=(-8, -8, 0))
    pet = make_image(np.ones((4, 5, 5), np.float32), spacing=(4, 4, 4), origin=(-9, -9, -1))
    return ct, pet


def test_container_round_trip(tmp_path):
    ct, pet = _container_images()
    ehr = {"Age": 61, "Gender": 1, "Tobacco Consumption": None, "M-stage": "M0"}
    layout.write_container_input(tmp_path / "input", "case-7", ct, pet, ehr)
    got = layout.read_container_input(tmp_path / "input")
    assert got.patient == "case-7" and got.ehr == ehr
    assert got.ct.GetSize() == ct.GetSize() and got.pet.GetSpacing() == pet.GetSpacing()

    mask = sitk.Image(ct.GetSize(), sitk.sitkUInt8)
    mask.CopyInformation(ct)
    written = layout.write_container_outputs(tmp_path / "output", mask=mask, rfs=1.25, hpv=True)
    assert len(written) == 3
    out_mask = sitk.ReadImage(str(tmp_path / "output" / layout.CONTAINER_MASK))
    assert out_mask.GetPixelID() == sitk.sitkUInt8 and layout.same_grid(out_mask, ct)
    assert json.loads((tmp_path / "output" / "rfs.json").read_text()) == 1.25
    assert json.loads((tmp_path / "output" / "hpv-status.json").read_text()) is True


def test_container_missing_pet_is_named(tmp_path):
    ct, pet = _container_images()
    layout.write_container_input(tmp_path, "case-7", ct, pet, {})
    (tmp_path / "images" / "pet" / "case-7.mha").unlink()
    with pytest.raises(
        InputError, match=r"images/pet: expected exactly one PET \.mha file, found 0"
    ):
        layout.read_container_input(tmp_path)


def test_container_bad_ehr_is_named(tmp_path):
    ct, pet = _container_images()
    layout.write_container_input(tmp_path, "case-7", ct, pet, {})
    (tmp_path / "ehr.json").write_text("{broken")
    with pytest.raises(InputError, match=r"case-7: .*ehr\.json: cannot read JSON"):
        layout.read_container_input(tmp_path)


# --------------------------------------------------------------------------- plausibility


def _shift_pet(case, shift_z_mm: float) -> None:
    """Move the PET along z so that it shares only part of the CT's z extent."""
    pet = sitk.ReadImage(str(case.pet))
    origin = list(pet.GetOrigin())
    origin[2] += shift_z_mm
    pet.SetOrigin(origin)
    sitk.WriteImage(pet, str(case.pet))


def test_pet_overlapping_the_ct_by_a_few_mm_is_named(release_copy, tmp_path):
    case = _first(release_copy)
    ct, pet = (sitk.ReadImage(str(p)) for p in (case.ct, case.pet))
    _, hi_c = layout.physical_bounds(ct)
    lo_p, _ = layout.physical_bounds(pet)
    _shift_pet(case, hi_c[2] - 7.0 - lo_p[2])  # the PET starts 7 mm below the CT's top
    shifted = sitk.ReadImage(str(case.pet))
    assert layout.overlap_box(ct, shifted) is not None  # they do overlap, by 7 mm
    assert layout.overlap_fraction(ct, shifted) < 0.1
    _assert_rejected(release_copy, tmp_path / "out", case.patient, case.pet.name, "covers only")


def test_overlap_fraction_is_per_axis_of_the_shorter_field_of_view():
    long_narrow = make_image(np.zeros((100, 10, 10), np.float32), spacing=(5, 5, 10))  # z 990 mm
    short_wide = make_image(
        np.zeros((30, 40, 40), np.float32), spacing=(5, 5, 10), origin=(-100, -100, 200)
    )
    assert layout.overlap_fraction(long_narrow, short_wide) == 1.0  # each inside the other's span
    half = make_image(np.zeros((30, 10, 10), np.float32), spacing=(5, 5, 10), origin=(0, 22.5, 0))
    assert layout.overlap_fraction(long_narrow, half) == pytest.approx(0.5)


def test_label_grid_differing_only_by_origin_names_the_origins(release_copy, tmp_path):
    case = _first(release_copy)
    label = sitk.ReadImage(str(case.label))
    label.SetOrigin(tuple(o + 2.5 for o in label.GetOrigin()))
    sitk.WriteImage(label, str(case.label))
    err = _assert_rejected(
        release_copy, tmp_path / "out", case.patient, case.label.name, "not on the CT grid"
    )
    message = str(err)
    assert "origin (" in message and " vs (" in message
    assert "size" not in message and "spacing" not in message  # only what differs


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("Performance Status", "7", "ECOG"),
        ("Age", "1e9", "implausible age"),
        ("Age", "-3", "implausible age"),
    ],
)
def test_implausible_clinical_values_are_named(release_copy, tmp_path, column, value, message):
    path = release_copy / "Task 2" / layout.TASK_CSV[2]
    frame = pd.read_csv(path, dtype=str)
    patient = frame.loc[0, "PatientID"]
    frame.loc[0, column] = value
    frame.to_csv(path, index=False)
    _assert_rejected(release_copy, tmp_path / "out", patient, path.name, message)


def test_a_missing_column_is_the_only_problem_reported(release_copy):
    path = release_copy / "Task 3" / layout.TASK_CSV[3]
    pd.read_csv(path).drop(columns=["HPV Status"]).to_csv(path, index=False)
    release = layout.scan_release(release_copy)
    problems: list = []
    layout.read_tables(release, problems)
    assert [p.message for p in problems] == ["missing column(s) ['HPV Status']"]


@pytest.mark.parametrize("bad", ["..\\CHUM-009", ".CHUM-009", "CHUM 009", "../CHUM-009"])
def test_unsafe_patient_ids_are_refused_in_tables(release_copy, bad):
    path = release_copy / "Task 1" / layout.TASK_CSV[1]
    frame = pd.read_csv(path, dtype=str)
    frame.loc[len(frame)] = {c: (bad if c == "PatientID" else "") for c in frame.columns}
    frame.to_csv(path, index=False)
    problems: list = []
    layout.read_table(path, 1, problems)
    assert any("not a valid patient ID" in p.message and repr(bad) in p.message for p in problems)


def test_unsafe_folder_names_are_refused_and_hidden_folders_ignored(release_copy):
    (release_copy / "Task 1" / "CHUM\\009").mkdir()
    (release_copy / "Task 1" / ".ipynb_checkpoints").mkdir()
    release = layout.scan_release(release_copy)
    assert [p.patient for p in release.problems] == ["CHUM\\009"]
    assert "not a valid patient ID" in release.problems[0].message
    assert ".ipynb_checkpoints" not in release.patients()


def test_validate_reads_the_task_2_and_3_copies_too(release_copy):
    release = layout.scan_release(release_copy)
    task1 = {c.patient for c in release.cases[1]}
    for task, victim in ((2, "ct"), (3, "pet")):
        case = next(c for c in release.cases[task] if c.patient in task1)
        path = getattr(case, victim)
        path.write_bytes(b"" if victim == "ct" else path.read_bytes()[:200])
    with pytest.raises(InputError) as info:
        layout.validate_release(release_copy)
    files = {p.file.parent.parent.name for p in info.value.problems}
    assert files == {"Task 2", "Task 3"}


# --------------------------------------------------------------------------- output folders


def _bytes(root):
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_prepare_into_a_folder_holding_a_foreign_file_is_refused_and_kept(release_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    with pytest.raises(io.OutputError, match=r"notes\.txt"):
        prepare_release(release_dir, out, _cfg())
    assert _bytes(out) == {"notes.txt": b"my notes"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("where", ["release", "inside", "parent"])
def test_prepare_onto_its_own_release_is_refused_and_every_byte_kept(release_copy, where):
    before = _bytes(release_copy.parent)
    out = {
        "release": release_copy,
        "inside": release_copy / "Task 1" / "prepared",
        "parent": release_copy.parent,
    }[where]
    with pytest.raises(io.OutputError, match="input"):
        prepare_release(release_copy, out, _cfg())
    assert _bytes(release_copy.parent) == before


# --------------------------------------------------------------------------- hostile sizes


def test_an_id_with_a_trailing_newline_is_not_a_patient_id(release_copy):
    assert layout.id_problem("NL-013\n") is not None and layout.id_problem("NL-013") is None
    (release_copy / "Task 1" / "CHUM-009\n").mkdir()
    problems = layout.scan_release(release_copy).problems
    assert any("'CHUM-009\\n' is not a valid patient ID" in p.message for p in problems)


def _claiming(path, shape):
    """A tiny NIfTI whose header claims ``shape`` (its voxels are not there)."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.float32)
    path.write_bytes(header.binaryblock + b"\0" * 8)


def test_a_header_claiming_a_huge_volume_is_refused_before_any_voxel_is_read(tmp_path, monkeypatch):
    """A 96-byte .nii.gz whose header claims 2048 x 1024 x 1024 once took 4.7 GB to fail."""
    path = tmp_path / "bomb.nii"
    _claiming(path, (2048, 1024, 1024))
    assert path.stat().st_size < 1000
    problems: list = []
    assert layout.read_image(path, "CHUM-001", problems) is None
    assert "2147483648 voxels, more than the 268435456 allowed (HECKTOR_MAX_VOXELS)" in str(
        problems[0]
    )
    io.write_image(tmp_path / "thin.nii.gz", make_image(np.zeros((4, 4, 4)), (1e-4, 1.0, 1.0)))
    problems = []
    layout.read_image(tmp_path / "thin.nii.gz", "CHUM-001", problems)
    assert "implausible voxel spacing (0.0001, 1.0, 1.0) mm" in problems[0].message
    monkeypatch.setenv("HECKTOR_MAX_VOXELS", "1000")  # the limits are the user's to set
    image = make_image(np.zeros((16, 16, 16), np.float32))
    sitk.WriteImage(image, str(tmp_path / "ct.mha"))
    problems = []
    assert layout.read_image(tmp_path / "ct.mha", "CHUM-001", problems) is None
    assert "4096 voxels, more than the 1000 allowed" in problems[0].message


def test_a_deeply_nested_ehr_is_named(tmp_path):
    ct, pet = _container_images()
    layout.write_container_input(tmp_path, "case-7", ct, pet, {})
    (tmp_path / "ehr.json").write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(
        InputError, match=r"case-7: .*ehr\.json: cannot read JSON \(nested too deeply"
    ):
        layout.read_container_input(tmp_path)
