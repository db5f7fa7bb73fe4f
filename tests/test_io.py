import json
import os
import stat

import numpy as np
import pytest
import SimpleITK as sitk

from hecktor import io


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError), io.atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_replaces_on_success(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    io.write_text(target, "new")
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_atomic_dir_keeps_the_old_folder_on_failure(tmp_path):
    target = tmp_path / "folder"
    io.mark_dir(target, "prepare")
    (target / "a").write_text("old")
    with pytest.raises(ValueError), io.atomic_dir(target, "prepare") as tmp:
        (tmp / "b").write_text("partial")
        raise ValueError("bad input")
    assert [p.name for p in tmp_path.iterdir()] == ["folder"]
    assert sorted(p.name for p in target.iterdir()) == [io.MARKER, "a"]
    with io.atomic_dir(target, "prepare") as tmp:
        (tmp / "b").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == [io.MARKER, "b"]
    assert [p.name for p in tmp_path.iterdir()] == ["folder"]


def _tree(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("owner", [None, "synth"])
def test_a_folder_not_ours_is_refused_before_any_work_and_kept(tmp_path, owner):
    target = tmp_path / "folder"
    if owner:
        io.mark_dir(target, owner)
    target.mkdir(exist_ok=True)
    (target / "notes.txt").write_text("mine")
    before = _tree(tmp_path)
    entered = []
    with pytest.raises(io.OutputError, match=str(target)), io.atomic_dir(target, "prepare"):
        entered.append(True)
    assert not entered and _tree(tmp_path) == before


def test_an_empty_or_absent_folder_is_taken_and_marked(tmp_path):
    (tmp_path / "empty").mkdir()
    for target in (tmp_path / "empty", tmp_path / "new"):
        with io.atomic_dir(target, "synth") as tmp:
            (tmp / "x").write_text("1")
        assert sorted(p.name for p in target.iterdir()) == [io.MARKER, "x"]
    # fixed content, so DVC sees two equal outputs as equal
    assert (tmp_path / "empty" / io.MARKER).read_bytes() == (
        tmp_path / "new" / io.MARKER
    ).read_bytes()


@pytest.mark.parametrize("relation", ["equal", "inside", "containing"])
def test_an_output_overlapping_an_input_is_refused(tmp_path, relation):
    given = tmp_path / "data" / "release"
    given.mkdir(parents=True)
    out = {"equal": given, "inside": given / "out", "containing": tmp_path / "data"}[relation]
    with pytest.raises(io.OutputError, match="input"):
        io.claim_dir(out, "prepare", [given])


def test_an_output_file_equal_to_or_inside_an_input_is_refused(tmp_path):
    given = tmp_path / "preds"
    given.mkdir()
    (given / "risk.csv").write_text("x")
    for out in (given / "risk.csv", given / "sub" / "m.json"):
        with pytest.raises(io.OutputError, match="input"):
            io.check_output_file(out, [given / "risk.csv", given])
    assert io.check_output_file(tmp_path / "m.json", [given]) == tmp_path / "m.json"


def test_a_file_is_not_taken_for_a_folder_nor_a_folder_for_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(io.OutputError, match="is a file"):
        io.claim_dir(tmp_path / "file", "export")
    with pytest.raises(io.OutputError, match="is a folder"):
        io.check_output_file(tmp_path)


def test_claim_json_overwrites_only_its_own_command_output(tmp_path):
    ours, other = tmp_path / "ours.json", tmp_path / "other.json"
    io.write_json(ours, {"written_by": "hecktor evaluate seg"})
    other.write_text('{"mine": 1}')
    assert io.claim_json(ours, "evaluate seg") == ours
    with pytest.raises(io.OutputError, match="not written by"):
        io.claim_json(ours, "evaluate rfs")
    with pytest.raises(io.OutputError, match="not written by"):
        io.claim_json(other, "evaluate seg")


def test_json_is_strict_and_says_what_was_undefined(tmp_path, caplog):
    target = tmp_path / "m.json"
    io.write_json(target, {"c_index": float("nan"), "ok": 0.5, "per": [float("inf"), 1.0]})
    text = target.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text, parse_constant=pytest.fail) == {
        "c_index": None,
        "ok": 0.5,
        "per": [None, 1.0],
    }
    assert "c_index" in caplog.text and "per[0]" in caplog.text
    assert np.isnan(io.figure(None)) and io.figure(0.25) == 0.25


@pytest.mark.parametrize("name", ["img.nii.gz", "img.mha"])
def test_write_image_keeps_extension_and_geometry(tmp_path, name):
    image = sitk.GetImageFromArray(np.arange(24, dtype=np.int16).reshape(2, 3, 4))
    image.SetSpacing((0.5, 1.0, 2.0))
    image.SetOrigin((1.0, 2.0, 3.0))
    io.write_image(tmp_path / name, image)
    back = sitk.ReadImage(str(tmp_path / name))
    assert back.GetSpacing() == (0.5, 1.0, 2.0) and back.GetOrigin() == (1.0, 2.0, 3.0)
    assert [p.name for p in tmp_path.iterdir()] == [name]


def test_outputs_get_the_permissions_the_umask_gives_any_new_file(tmp_path):
    """A mask or folder we write is as readable as any file the user makes (not 0600/0700)."""
    previous = os.umask(0o022)
    try:
        io.write_text(tmp_path / "a.txt", "x")
        with io.atomic_dir(tmp_path / "out", "test") as folder:
            (folder / "b.txt").write_text("y")
        os.umask(0o077)
        io.write_text(tmp_path / "private.txt", "z")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "private.txt").stat().st_mode) == 0o600
