import json
import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from hecktor import io, locks


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


def _image(n: int = 32) -> sitk.Image:
    return sitk.GetImageFromArray(np.random.default_rng(0).random((n, n, n)).astype(np.float32))


def full_disk(monkeypatch):
    """A disk that fills as ITK's gzip writer writes: it writes a short file and returns
    normally (as it does on a full disk), and the disk then reports no free block."""
    real = sitk.WriteImage
    full = {"now": False}

    def short_write(image, path, useCompression=True):
        real(image, path, useCompression=useCompression)
        with open(path, "r+b") as handle:
            handle.truncate(handle.seek(0, 2) // 3)
        full["now"] = True

    real_statvfs = os.statvfs

    def statvfs(path):
        found = real_statvfs(path)
        if not full["now"]:
            return found
        return os.statvfs_result((*found[:4], 0, *found[5:]))  # f_bavail = 0

    monkeypatch.setattr(sitk, "WriteImage", short_write)
    monkeypatch.setattr(os, "statvfs", statvfs)


def test_a_full_disk_publishes_nothing_and_says_so(tmp_path, monkeypatch):
    """ITK returns normally when the disk fills, leaving a short .nii.gz: it is never renamed
    into place (a rerun would take it for a result)."""
    full_disk(monkeypatch)
    with pytest.raises(io.WriteError, match=r"mask\.nii\.gz: no space left on the disk"):
        io.write_image(tmp_path / "mask.nii.gz", _image())
    assert list(tmp_path.iterdir()) == []


def test_a_file_that_does_not_read_back_is_not_published(tmp_path, monkeypatch):
    real = sitk.WriteImage

    def damaged(image, path, useCompression=True):
        real(image, path, useCompression=useCompression)
        data = Path(path).read_bytes()
        Path(path).write_bytes(data[: len(data) // 2])

    monkeypatch.setattr(sitk, "WriteImage", damaged)
    with pytest.raises(io.WriteError, match=r"a\.nii\.gz: the written file is not what was"):
        io.write_image(tmp_path / "a.nii.gz", _image())
    assert list(tmp_path.iterdir()) == []


def _tmpfs_command(size_kb: int, script: str) -> list[str]:
    """A Python script run on a tmpfs of ``size_kb`` at $DISK, in a mount namespace of its own
    (unprivileged where user namespaces are allowed; nothing stays mounted)."""
    shell = f'mount -t tmpfs -o size={size_kb}k tmpfs "$DISK" && exec "$0" -c "$1"'
    return ["unshare", "-rm", "sh", "-c", shell, sys.executable, script]


def test_a_real_full_disk_is_named_and_leaves_nothing(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    script = """
import os, sys, numpy as np, SimpleITK as sitk
from hecktor import io
image = sitk.GetImageFromArray(np.random.default_rng(0).random((64, 64, 64)).astype(np.float32))
for name in ("mask.nii.gz", "mask.mha", "notes.txt"):
    try:
        io.write_text(os.environ["DISK"] + "/" + name, "x" * 300_000) if name.endswith("txt") \\
            else io.write_image(os.environ["DISK"] + "/" + name, image)
    except io.WriteError as err:
        print(err)
print(sorted(os.listdir(os.environ["DISK"])))
"""
    env = os.environ | {"DISK": str(disk)}
    try:
        done = subprocess.run(_tmpfs_command(64, script), env=env, capture_output=True, text=True,
                              timeout=120)  # fmt: skip
    except FileNotFoundError:
        pytest.skip("no unshare here")
    if "mount" in done.stderr and done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    lines = done.stdout.strip().splitlines()
    assert done.returncode == 0, done.stderr
    for name, line in zip(("mask.nii.gz", "mask.mha", "notes.txt"), lines, strict=False):
        assert line.startswith(f"{disk}/{name}: no space left on the disk ({disk}:")
    assert lines[-1] == "[]"  # nothing published, no temporary left


def test_leftovers_of_killed_writers_are_removed_and_live_ones_kept(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    tag = locks.host_id()
    gone = tmp_path / f".out.json.{tag}-{dead.pid}-0123abcd.tmp.json"
    live = tmp_path / f".out.json.{tag}-{os.getpid()}-0123abcd.tmp.json"
    elsewhere = tmp_path / ".out.json.ffffffff-1-0123abcd.tmp.json"  # another machine's
    for path in (gone, live, elsewhere):
        path.write_text("half")
    io.write_json(tmp_path / "out.json", {"a": 1})
    assert not gone.exists() and live.exists() and elsewhere.exists()

    # a folder's writer holds its lock: every leftover of that folder is dead, whatever its name
    folder_left = tmp_path / ".prepared.0123abcd.tmp"  # the earlier naming, no owner
    folder_left.mkdir()
    (folder_left / "big.b2nd").write_bytes(b"0" * 1000)
    with io.atomic_dir(tmp_path / "prepared", "prepare") as tmp:
        (tmp / "a").write_text("1")
    assert not folder_left.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".prepared")) == []


def test_a_folder_set_aside_by_a_killed_replace_is_put_back(tmp_path):
    """killed between atomic_dir's two renames: the earlier output waits as .<name>.old."""
    with io.atomic_dir(tmp_path / "out", "prepare") as tmp:
        (tmp / "a").write_text("earlier")
    os.replace(tmp_path / "out", tmp_path / ".out.old")
    with pytest.raises(RuntimeError), io.atomic_dir(tmp_path / "out", "prepare"):
        raise RuntimeError("failed run")
    assert (tmp_path / "out" / "a").read_text() == "earlier"


def test_json_given_to_us_is_bounded(tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(ValueError, match="nested too deeply"):
        io.read_json(deep)
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"a": "x" * 2_000_000}))
    with pytest.raises(ValueError, match="more than the"):
        io.read_json(big)


def test_a_result_written_in_place_is_incomplete_until_its_writer_ends(tmp_path):
    with pytest.raises(RuntimeError), io.owned_dir(tmp_path / "out", "predict") as out:
        (out / "a.csv").write_text("PatientID\n")
        raise RuntimeError("killed")
    with pytest.raises(io.OutputError, match=r"incomplete: `hecktor predict` stopped"):
        io.check_complete(tmp_path / "out" / "a.csv")
    with io.owned_dir(tmp_path / "out", "predict"):
        pass
    io.check_complete(tmp_path / "out")
    io.check_complete(tmp_path / "elsewhere.csv")  # files no command of ours wrote pass


def test_scratch_folders_of_killed_processes_are_removed(tmp_path, monkeypatch):
    """A killed predict leaves the models it fetched in the temporary folder: the next one
    removes them (a live process's scratch is kept)."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    tag = locks.host_id()
    left = tmp_path / f"hecktor-models-{tag}-{dead.pid}-abc"
    live = tmp_path / f"hecktor-models-{tag}-{os.getpid()}-abc"
    for folder in (left, live):
        (folder / "hecktor-seg").mkdir(parents=True)
    with io.scratch_dir("hecktor-models-") as mine:
        assert mine.is_dir() and mine.name.startswith(f"hecktor-models-{tag}-{os.getpid()}-")
        assert not left.exists() and live.exists()
    assert not mine.exists()
