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
    target.mkdir()
    (target / "a").write_text("old")
    with pytest.raises(ValueError), io.atomic_dir(target) as tmp:
        (tmp / "b").write_text("partial")
        raise ValueError("bad input")
    assert [p.name for p in tmp_path.iterdir()] == ["folder"]
    assert [p.name for p in target.iterdir()] == ["a"]
    with io.atomic_dir(target) as tmp:
        (tmp / "b").write_text("new")
    assert [p.name for p in target.iterdir()] == ["b"]
    assert [p.name for p in tmp_path.iterdir()] == ["folder"]


@pytest.mark.parametrize("name", ["img.nii.gz", "img.mha"])
def test_write_image_keeps_extension_and_geometry(tmp_path, name):
    image = sitk.GetImageFromArray(np.arange(24, dtype=np.int16).reshape(2, 3, 4))
    image.SetSpacing((0.5, 1.0, 2.0))
    image.SetOrigin((1.0, 2.0, 3.0))
    io.write_image(tmp_path / name, image)
    back = sitk.ReadImage(str(tmp_path / name))
    assert back.GetSpacing() == (0.5, 1.0, 2.0) and back.GetOrigin() == (1.0, 2.0, 3.0)
    assert [p.name for p in tmp_path.iterdir()] == [name]
