"""The engine: checkpoints, resume after a real kill, selection, SWA, DDP, precision."""

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from hecktor.training import engine
from hecktor.training.tasks import SegmentationTask
from hecktor.training.workflow import folds_of


def _task_and_fold(cfg):
    from hecktor.data.splits import load_splits

    task = SegmentationTask(cfg.seg, cfg.paths.prepared)
    _, train_ids, val_ids = folds_of(load_splits(cfg.paths.splits), "seg", "holdout")[0]
    return task, train_ids, val_ids


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_fit_writes_safe_checkpoints_and_selects_the_best(project_cfg, tmp_path):
    task, train_ids, val_ids = _task_and_fold(project_cfg)
    cfg = project_cfg.seg.train.model_copy(update={"epochs": 2})
    result = engine.fit(task, train_ids, val_ids, cfg, tmp_path / "run", config_hash="h")
    for name in ("last.pt", "best.pt"):
        state = torch.load(
            tmp_path / "run" / name, weights_only=True
        )  # nothing untrusted unpickled
        assert "model" in state
    last = engine.load_checkpoint(tmp_path / "run" / "last.pt")
    assert last["epoch"] == 2 and len(last["history"]) == 2
    scores = [h["val_score"] for h in last["history"]]
    assert result.best_score == max(scores)
    assert result.best_epoch == 1 + scores.index(max(scores))
    assert engine.load_checkpoint(tmp_path / "run" / "best.pt")["epoch"] == result.best_epoch

    swa_metrics = engine.swa(task, train_ids, val_ids, cfg, tmp_path / "run", config_hash="h")
    assert set(swa_metrics) == {"GTVp_DSC", "GTVn_DSCagg", "GTVn_F1agg", "score"}
    assert (tmp_path / "run" / "swa.pt").is_file()


def test_a_checkpoint_of_another_config_is_not_resumed(project_cfg, tmp_path):
    task, train_ids, val_ids = _task_and_fold(project_cfg)
    cfg = project_cfg.seg.train.model_copy(update={"epochs": 1})
    engine.fit(task, train_ids, val_ids, cfg, tmp_path / "run", config_hash="a")
    result = engine.fit(task, train_ids, val_ids, cfg, tmp_path / "run", config_hash="b")
    assert [h["epoch"] for h in result.history] == [1]  # trained afresh, not "already done"


def test_non_finite_loss_stops_with_a_clear_error(project_cfg, tmp_path):
    task, train_ids, val_ids = _task_and_fold(project_cfg)

    class Broken(SegmentationTask):
        def loss(self, model, batch, device):
            return super().loss(model, batch, device) * float("nan")

    broken = Broken(project_cfg.seg, project_cfg.paths.prepared)
    with pytest.raises(FloatingPointError, match="non-finite loss"):
        engine.fit(broken, train_ids, val_ids, project_cfg.seg.train, tmp_path / "run")
    assert task.name == "seg"


def test_precision_resolution():
    cpu = torch.device("cpu")
    assert engine.precision_for("fp32", cpu) == "fp32"
    assert engine.precision_for("auto", cpu) == ("bf16" if engine.cpu_supports_bf16() else "fp32")
    with engine.autocast_for("bf16", cpu)():
        y = torch.nn.Linear(4, 4)(torch.randn(2, 4))
    assert y.dtype == torch.bfloat16


_SCRIPT = textwrap.dedent(
    """
    import logging, sys, torch
    logging.basicConfig(level=logging.INFO)
    torch.set_num_threads(1)
    from hecktor.config import load_config, override
    from hecktor.training import engine
    from hecktor.training.tasks import SegmentationTask
    from hecktor.data.splits import load_splits
    from hecktor.training.workflow import folds_of
    params, prepared, splits, out, epochs = sys.argv[1:6]
    cfg = load_config(params, "tiny")
    task = SegmentationTask(cfg.seg, prepared)
    _, train_ids, val_ids = folds_of(load_splits(splits), "seg", "holdout")[0]
    train = override(cfg.seg.train, epochs=int(epochs))
    engine.fit(task, train_ids, val_ids, train, out, config_hash="kill-test")
    """
)


@pytest.mark.slow
def test_resume_after_a_kill_ends_with_the_same_weights(project_cfg, tmp_path):
    from tests.conftest import ROOT

    script = tmp_path / "fit.py"
    script.write_text(_SCRIPT)
    epochs = "4"

    def command(out):
        return [sys.executable, str(script), str(ROOT / "params.yaml"), str(project_cfg.paths.prepared),
                str(project_cfg.paths.splits), str(out), epochs]  # fmt: skip

    straight = subprocess.run(command(tmp_path / "straight"), capture_output=True, text=True)
    assert straight.returncode == 0, straight.stderr

    killed = subprocess.Popen(
        command(tmp_path / "killed"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    last = tmp_path / "killed" / "last.pt"
    deadline = time.time() + 120
    while time.time() < deadline:
        if last.is_file() and engine.load_checkpoint(last)["epoch"] >= 2:
            break
        time.sleep(0.05)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    stopped_at = engine.load_checkpoint(last)["epoch"]
    assert stopped_at < 4, "the run finished before it could be killed"
    resumed = subprocess.run(command(tmp_path / "killed"), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {tmp_path / 'killed'} after epoch {stopped_at}" in resumed.stderr

    a = engine.load_checkpoint(tmp_path / "straight" / "last.pt")
    b = engine.load_checkpoint(last)
    assert a["epoch"] == b["epoch"] == 4
    assert _same_weights(a["model"], b["model"])
    assert [h["train_loss"] for h in a["history"]] == [h["train_loss"] for h in b["history"]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, cfg, out):
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank)
    )
    torch.set_num_threads(1)
    task, train_ids, val_ids = _task_and_fold(cfg)
    train = cfg.seg.train.model_copy(update={"epochs": 2})
    result = engine.fit(task, train_ids, val_ids, train, out, config_hash="ddp")
    torch.save(result.model.state_dict(), out / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_process_ddp_trains_the_same_model_on_both_ranks(project_cfg, tmp_path):
    out = tmp_path / "ddp"
    out.mkdir()
    torch.multiprocessing.spawn(
        _ddp_worker, args=(2, _free_port(), project_cfg, out), nprocs=2, join=True
    )
    a = torch.load(out / "rank0.pt", weights_only=True)
    b = torch.load(out / "rank1.pt", weights_only=True)
    assert _same_weights(a, b)
    assert engine.load_checkpoint(out / "last.pt")["epoch"] == 2  # rank 0 checkpointed
    start = torch.load(out / "rank0.pt", weights_only=True)
    assert any(v.float().abs().sum() > 0 for v in start.values())


def test_equal_checkpoints_are_equal_bytes(tmp_path):
    state = {"model": {"w": torch.arange(6.0).reshape(2, 3)}, "epoch": 3}
    engine.save_checkpoint(tmp_path / "a.pt", state)
    engine.save_checkpoint(tmp_path / "b.pt", state)
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()
    assert torch.equal(engine.load_checkpoint(tmp_path / "a.pt")["model"]["w"], state["model"]["w"])
