import json

import pytest
import torch

from hecktor import checkpoints
from hecktor.fingerprints import file_sha256


def test_equal_checkpoints_are_equal_bytes(tmp_path):
    state = {"model": {"w": torch.arange(6.0).reshape(2, 3)}, "epoch": 3}
    checkpoints.save_checkpoint(tmp_path / "a.pt", state)
    checkpoints.save_checkpoint(tmp_path / "b.pt", state)
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()
    assert torch.equal(
        checkpoints.load_checkpoint(tmp_path / "a.pt")["model"]["w"], state["model"]["w"]
    )


def test_a_fold_is_served_only_through_its_final_record(tmp_path):
    fold = tmp_path / "fold"
    for name, key in (("best.pt", "k"), ("swa.pt", "old")):
        checkpoints.save_checkpoint(fold / name, {"model": {}, "key": key})
    with pytest.raises(ValueError, match="no finished training"):
        checkpoints.trained_checkpoint(fold)
    with pytest.raises(RuntimeError, match="another configuration"):
        checkpoints.write_final(fold, "k", swa_ran=True)  # swa.pt is another key's
    checkpoints.write_final(fold, "k", swa_ran=False)
    assert checkpoints.trained_checkpoint(fold) == fold / "best.pt"
    assert json.loads((fold / checkpoints.FINAL).read_text()) == {
        "weights": "best.pt", "key": "k", "sha256": file_sha256(fold / "best.pt")
    }  # fmt: skip
    checkpoints.clear_fold(fold)
    assert list(fold.iterdir()) == []


def test_weights_changed_after_training_are_refused_naming_the_file(tmp_path):
    """A fold's weights are read only as training left them: one flipped bit, or a truncated or
    replaced file, is named (register would otherwise register it)."""
    fold = tmp_path / "fold"
    checkpoints.save_checkpoint(fold / "swa.pt", {"model": {"w": torch.ones(64)}, "key": "k"})
    checkpoints.write_final(fold, "k", swa_ran=True)
    data = bytearray((fold / "swa.pt").read_bytes())
    data[len(data) // 2] ^= 1
    (fold / "swa.pt").write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"fold/swa\.pt: its bytes differ .* train the fold again"):
        checkpoints.trained_checkpoint(fold)
    (fold / checkpoints.FINAL).write_text(json.dumps({"weights": "swa.pt", "key": "k"}))
    with pytest.raises(ValueError, match=r"final\.json: written by an earlier version"):
        checkpoints.trained_checkpoint(fold)  # a record without the digest


def test_an_unreadable_weights_file_is_named(tmp_path):
    path = tmp_path / "model.pt"
    checkpoints.save_checkpoint(path, {"model": {"w": torch.ones(1000)}})
    path.write_bytes(path.read_bytes()[:500])  # truncated
    with pytest.raises(ValueError, match=r"model\.pt: not a readable weights file, truncated"):
        checkpoints.load_checkpoint(path)
    with pytest.raises(ValueError, match=r"nothing\.pt: weights file missing"):
        checkpoints.load_checkpoint(tmp_path / "nothing.pt")


def test_a_checkpoint_is_published_only_whole(tmp_path, monkeypatch):
    """A save that leaves a short archive (as torch does on a full disk) publishes nothing."""
    real = torch.save

    def short(state, handle):
        real(state, handle)
        handle.truncate(handle.tell() // 2)

    monkeypatch.setattr(torch, "save", short)
    with pytest.raises(ValueError, match=r"a\.pt: the written file is not what was written"):
        checkpoints.save_checkpoint(tmp_path / "a.pt", {"model": {"w": torch.ones(1000)}})
    assert list(tmp_path.iterdir()) == []
