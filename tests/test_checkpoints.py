import json

import pytest
import torch

from hecktor import checkpoints


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
    assert json.loads((fold / checkpoints.FINAL).read_text()) == {"weights": "best.pt", "key": "k"}
    checkpoints.clear_fold(fold)
    assert list(fold.iterdir()) == []
