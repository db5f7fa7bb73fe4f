"""The engine: checkpoints, resume after a real kill, selection, SWA, DDP, precision."""

import itertools
import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from hecktor import checkpoints, devices
from hecktor.data.folds import folds_of
from hecktor.data.samplers import BalancedBatchSampler
from hecktor.tasks.seg import SegmentationTask
from hecktor.training import engine
from tests.conftest import PoisonedSegmentation


def _task_and_fold(cfg):
    from hecktor.data.folds import load_splits

    task = SegmentationTask(cfg.seg, cfg.paths.prepared)
    _, train_ids, val_ids = folds_of(load_splits(cfg.paths.splits), "task1", "holdout")[0]
    return task, train_ids, val_ids


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_fit_writes_safe_checkpoints_and_selects_the_best(project_cfg, tmp_path):
    task, train_ids, val_ids = _task_and_fold(project_cfg)
    cfg = project_cfg.seg.train.model_copy(update={"epochs": 2})
    result = engine.fit(task, train_ids, val_ids, cfg, tmp_path / "run", key="h")
    for name in ("last.pt", "best.pt"):
        state = torch.load(
            tmp_path / "run" / name, weights_only=True
        )  # nothing untrusted unpickled
        assert "model" in state
    last = checkpoints.load_checkpoint(tmp_path / "run" / "last.pt")
    assert last["epoch"] == 2 and len(last["history"]) == 2
    scores = [h["val_score"] for h in last["history"]]
    assert result.best_score == max(scores)
    assert result.best_epoch == 1 + scores.index(max(scores))
    assert checkpoints.load_checkpoint(tmp_path / "run" / "best.pt")["epoch"] == result.best_epoch

    swa_metrics = engine.swa(task, train_ids, val_ids, cfg, tmp_path / "run", key="h")
    assert set(swa_metrics) == {"GTVp_DSC", "GTVn_DSCagg", "GTVn_F1agg", "score"}
    assert (tmp_path / "run" / "swa.pt").is_file()


class _Worsening(SegmentationTask):
    """Validation says every epoch is worse than the one before."""

    calls = 0

    def validate(self, model, patients, device, autocast):
        self.calls += 1
        return {"score": -float(self.calls)}


@pytest.mark.parametrize(("select", "kept"), [("best", 1), ("last", 3)])
def test_the_kept_epoch_is_the_best_or_the_last(project_cfg, tmp_path, select, kept):
    task = _Worsening(project_cfg.seg, project_cfg.paths.prepared)
    _, train_ids, val_ids = _task_and_fold(project_cfg)
    cfg = project_cfg.seg.train.model_copy(update={"epochs": 3, "select": select})
    result = engine.fit(task, train_ids, val_ids, cfg, tmp_path / "run", key="h")
    best = checkpoints.load_checkpoint(tmp_path / "run" / "best.pt")
    assert result.best_epoch == kept and best["epoch"] == kept
    last = checkpoints.load_checkpoint(tmp_path / "run" / "last.pt")
    assert [h["val_score"] for h in last["history"]] == [-1.0, -2.0, -3.0]  # curves either way
    assert _same_weights(best["model"], last["model"]) == (select == "last")


def test_optimizer_state_goes_to_its_own_folder_and_resumes_from_there(
    project_cfg, tmp_path, caplog
):
    """The model folder holds what is versioned; the resume state lives apart (not a DVC output)."""
    task, train_ids, val_ids = _task_and_fold(project_cfg)
    cfg = project_cfg.seg.train.model_copy(update={"epochs": 1, "swa_epochs": 1})
    out, state = tmp_path / "model", tmp_path / "state"
    engine.fit(task, train_ids, val_ids, cfg, out, key="k", state_dir=state)
    engine.swa(task, train_ids, val_ids, cfg, out, key="k", state_dir=state)
    assert {p.name for p in out.iterdir()} == {"best.pt", "swa.pt"}
    assert {p.name for p in state.iterdir()} == {"last.pt", "swa_last.pt"}
    longer = cfg.model_copy(update={"epochs": 2})
    with caplog.at_level(logging.INFO, logger="hecktor"):
        engine.fit(task, train_ids, val_ids, longer, out, key="k", state_dir=state)
    assert "resuming" in caplog.text and "after epoch 1" in caplog.text
    assert checkpoints.load_checkpoint(state / "last.pt")["epoch"] == 2


def test_a_checkpoint_of_another_config_is_not_resumed(project_cfg, tmp_path, caplog):
    task, train_ids, val_ids = _task_and_fold(project_cfg)
    cfg = project_cfg.seg.train.model_copy(update={"epochs": 1})
    engine.fit(task, train_ids, val_ids, cfg, tmp_path / "run", key="a")
    steps: list[int] = []
    loss = task.loss
    task.loss = lambda *args: (steps.append(1), loss(*args))[1]  # counts training steps
    with caplog.at_level("WARNING"):
        result = engine.fit(task, train_ids, val_ids, cfg, tmp_path / "run", key="b")
    assert steps, "resumed a checkpoint of another config instead of training afresh"
    assert "written under another config; starting afresh" in caplog.text
    assert [h["epoch"] for h in result.history] == [1]
    steps.clear()
    engine.fit(task, train_ids, val_ids, cfg, tmp_path / "run", key="b")  # its own: resumed, done
    assert not steps


def test_non_finite_loss_in_fp32_stops_with_a_clear_error(project_cfg, tmp_path):
    _, train_ids, val_ids = _task_and_fold(project_cfg)

    class Broken(SegmentationTask):
        def loss(self, model, batch, device):
            return super().loss(model, batch, device) * float("nan")

    broken = Broken(project_cfg.seg, project_cfg.paths.prepared)
    cfg = project_cfg.seg.train.model_copy(update={"precision": "fp32"})
    with pytest.raises(FloatingPointError, match=r"non-finite loss at epoch 1, step 1, in fp32"):
        engine.fit(broken, train_ids, val_ids, cfg, tmp_path / "run")


def _poisoned(cfg, always=False):
    task = PoisonedSegmentation(cfg.seg, cfg.paths.prepared)
    task.always = always
    return task


def _steps_per_epoch(cfg, train_ids):
    return len(train_ids) // cfg.seg.train.batch_size


def test_non_finite_gradients_are_skipped_then_the_run_continues_in_fp32(project_cfg, tmp_path):
    _, train_ids, val_ids = _task_and_fold(project_cfg)
    task = _poisoned(project_cfg)  # NaN gradients whenever autocast is on
    cfg = project_cfg.seg.train.model_copy(update={"epochs": 3, "precision": "bf16"})
    result = engine.fit(task, train_ids, val_ids, cfg, tmp_path / "run", key="h")
    skipped = [h["skipped_steps"] for h in result.history]
    assert sum(skipped) == engine.FALLBACK_AFTER["bf16"]  # then fp32, where nothing is poisoned
    assert skipped[-1] == 0 and len(result.history) == 3
    last = checkpoints.load_checkpoint(tmp_path / "run" / "last.pt")
    precision = last["precision"]
    assert precision["used"] == "fp32" and precision["fallback"]["from"] == "bf16"
    steps = _steps_per_epoch(project_cfg, train_ids)
    at = (precision["fallback"]["epoch"] - 1) * steps + precision["fallback"]["step"]
    assert at == engine.FALLBACK_AFTER["bf16"]  # the third consecutive bad step
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())
    assert checkpoints.load_checkpoint(tmp_path / "run" / "best.pt")["precision"]["used"] in (
        "bf16",
        "fp32",
    )
    # the epochs after the fallback trained on every step, with finite losses
    assert all(math.isfinite(h["train_loss"]) for h in result.history[1:])


def test_a_run_resumed_across_a_fallback_ends_with_the_same_weights(project_cfg, tmp_path):
    _, train_ids, val_ids = _task_and_fold(project_cfg)
    steps = _steps_per_epoch(project_cfg, train_ids)
    fallback_epoch = -(-engine.FALLBACK_AFTER["bf16"] // steps)  # ceil
    base = project_cfg.seg.train.model_copy(update={"precision": "bf16", "val_every": 100})
    total = fallback_epoch + 1
    straight = base.model_copy(update={"epochs": total})
    engine.fit(_poisoned(project_cfg), train_ids, val_ids, straight, tmp_path / "a", key="k")
    first = base.model_copy(update={"epochs": fallback_epoch})  # stops just after the fallback
    engine.fit(_poisoned(project_cfg), train_ids, val_ids, first, tmp_path / "b", key="k")
    assert checkpoints.load_checkpoint(tmp_path / "b" / "last.pt")["precision"]["used"] == "fp32"
    engine.fit(_poisoned(project_cfg), train_ids, val_ids, straight, tmp_path / "b", key="k")
    a = checkpoints.load_checkpoint(tmp_path / "a" / "last.pt")
    b = checkpoints.load_checkpoint(tmp_path / "b" / "last.pt")
    assert a["epoch"] == b["epoch"] == total
    assert _same_weights(a["model"], b["model"])
    assert a["precision"] == b["precision"]


def test_fp16_trains_through_the_loss_scaler_and_a_resumed_run_keeps_its_scale(
    project_cfg, tmp_path
):
    """fp16 AMP (GPUs without bf16, or asked for) scales every step's loss; the scaler's state is
    checkpointed, so a run resumed mid-way ends exactly as the straight one."""
    task, train_ids, val_ids = _task_and_fold(project_cfg)
    steps = _steps_per_epoch(project_cfg, train_ids)
    base = project_cfg.seg.train.model_copy(update={"precision": "fp16", "val_every": 100})
    straight = base.model_copy(update={"epochs": 2})
    result = engine.fit(task, train_ids, val_ids, straight, tmp_path / "a", key="k")
    a = checkpoints.load_checkpoint(tmp_path / "a" / "last.pt")
    assert a["precision"]["used"] == "fp16" and a["scaler"]["scale"] > 0
    skipped = sum(h["skipped_steps"] for h in result.history)
    assert a["scaler"]["_growth_tracker"] == 2 * steps - skipped  # each good step counted
    engine.fit(task, train_ids, val_ids, base.model_copy(update={"epochs": 1}), tmp_path / "b",
               key="k")  # fmt: skip
    engine.fit(task, train_ids, val_ids, straight, tmp_path / "b", key="k")
    b = checkpoints.load_checkpoint(tmp_path / "b" / "last.pt")
    assert _same_weights(a["model"], b["model"]) and a["scaler"] == b["scaler"]


def test_an_fp16_overflow_skips_the_step_and_halves_the_scale(project_cfg):
    task, train_ids, _ = _task_and_fold(project_cfg)
    poisoned = _poisoned(project_cfg)  # NaN gradients under autocast, as an overflow gives
    model = task.build_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loop = engine._Loop(poisoned, project_cfg.seg.train, torch.device("cpu"),
                        engine.Precision("fp16", "test"), 0, 1)  # fmt: skip
    optimizer = torch.optim.Adam(model.parameters())
    batch = next(iter(loop.loader(task.train_dataset(train_ids), 1)))
    start = loop.scaler.get_scale()
    loss, bad = loop._step(model, optimizer, batch)
    assert bad == "gradient" and math.isnan(loss)
    assert loop.scaler.get_scale() == start * loop.scaler.get_backoff_factor()
    assert _same_weights(before, model.state_dict())  # the step was skipped
    loop.task = task  # a healthy step then updates the weights, scale unchanged
    loss, bad = loop._step(model, optimizer, batch)
    assert bad is None and math.isfinite(loss)
    assert not _same_weights(before, model.state_dict())
    assert loop.scaler.get_scale() == start * loop.scaler.get_backoff_factor()


def test_an_fp16_epoch_without_a_good_step_continues_in_fp32(project_cfg, tmp_path):
    _, train_ids, val_ids = _task_and_fold(project_cfg)
    cfg = project_cfg.seg.train.model_copy(update={"epochs": 2, "precision": "fp16",
                                                   "val_every": 100})  # fmt: skip
    result = engine.fit(_poisoned(project_cfg), train_ids, val_ids, cfg, tmp_path / "r", key="k")
    assert [h["skipped_steps"] for h in result.history] == [
        _steps_per_epoch(project_cfg, train_ids),
        0,
    ]
    last = checkpoints.load_checkpoint(tmp_path / "r" / "last.pt")
    assert last["precision"]["used"] == "fp32" and last["precision"]["fallback"]["from"] == "fp16"
    assert "scaler" not in last  # fp32 needs none


def test_a_non_finite_step_in_fp32_after_a_fallback_is_an_error(project_cfg, tmp_path):
    _, train_ids, val_ids = _task_and_fold(project_cfg)
    cfg = project_cfg.seg.train.model_copy(update={"epochs": 3, "precision": "bf16"})
    with pytest.raises(FloatingPointError, match=r"non-finite gradient .* in fp32"):
        engine.fit(_poisoned(project_cfg, always=True), train_ids, val_ids, cfg, tmp_path / "r")


@pytest.mark.skipif(not devices.cpu_supports_bf16(), reason="this CPU has no native bf16")
def test_auto_takes_bf16_only_where_it_agrees_with_fp32_on_this_machine(project_cfg, tmp_path):
    task, train_ids, val_ids = _task_and_fold(project_cfg)
    cfg = project_cfg.seg.train.model_copy(update={"epochs": 1, "precision": "auto"})
    engine.fit(_poisoned(project_cfg), train_ids, val_ids, cfg, tmp_path / "bad", key="x")
    chosen = checkpoints.load_checkpoint(tmp_path / "bad" / "last.pt")["precision"]
    assert chosen["used"] == "fp32" and chosen["fallback"] is None
    assert "bf16 failed its start-up check (non-finite gradient" in chosen["reason"]
    engine.fit(task, train_ids, val_ids, cfg, tmp_path / "good", key="x")
    chosen = checkpoints.load_checkpoint(tmp_path / "good" / "last.pt")["precision"]
    assert chosen["used"] == "bf16" and "agrees with fp32" in chosen["reason"]


def test_the_start_up_check_measures_agreement_and_leaves_the_model_alone(project_cfg):
    task, train_ids, _ = _task_and_fold(project_cfg)
    model = task.build_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loop = engine._Loop(task, project_cfg.seg.train, torch.device("cpu"),
                        engine.Precision("fp32", "test"), 0, 1)  # fmt: skip
    batch = next(iter(loop.loader(task.train_dataset(train_ids), 1)))
    rng = torch.get_rng_state()
    problem, measured = engine.check_precision(task, model, batch, torch.device("cpu"), "bf16")
    assert problem is None, problem
    assert measured["gradient_cosine"] > engine.MIN_GRADIENT_COSINE
    assert _same_weights(before, model.state_dict()) and torch.equal(rng, torch.get_rng_state())
    poisoned, _ = engine.check_precision(
        _poisoned(project_cfg), model, batch, torch.device("cpu"), "bf16"
    )
    assert poisoned.startswith("non-finite gradient")


# --------------------------------------------------------------------------- final weights


def test_switching_swa_off_never_serves_the_old_swa_weights(project_cfg, tmp_path):
    from hecktor.config import override
    from hecktor.training.workflow import train

    with_swa = override(
        project_cfg.seg, train=override(project_cfg.seg.train, epochs=1, swa_epochs=1)
    )
    train(override(project_cfg, seg=with_swa), "seg", track=False)
    fold = project_cfg.paths.models / "seg" / "holdout"
    assert checkpoints.trained_checkpoint(fold).name == "swa.pt"
    without = override(with_swa, train=override(with_swa.train, swa_epochs=0))
    train(override(project_cfg, seg=without), "seg", track=False)
    assert checkpoints.trained_checkpoint(fold).name == "best.pt"
    assert not (fold / "swa.pt").exists() and not (fold / "swa_last.pt").exists()


def test_a_new_training_key_leaves_no_weights_of_the_old_one(project_cfg, tmp_path):
    task, train_ids, val_ids = _task_and_fold(project_cfg)
    cfg = project_cfg.seg.train.model_copy(update={"epochs": 1})
    engine.fit(task, train_ids, val_ids, cfg, tmp_path / "run", key="old")
    engine.swa(
        task,
        train_ids,
        val_ids,
        cfg.model_copy(update={"swa_epochs": 1}),
        tmp_path / "run",
        key="old",
    )
    assert (tmp_path / "run" / "swa.pt").is_file()
    # a new key without validation patients: best.pt must be this run's last epoch, not the old best
    engine.fit(task, train_ids, [], cfg, tmp_path / "run", key="new")
    best = checkpoints.load_checkpoint(tmp_path / "run" / "best.pt")
    assert best["metrics"] == {} and best["key"] == "new"
    assert not (tmp_path / "run" / "swa.pt").exists()
    with pytest.raises(ValueError, match="no finished training"):
        checkpoints.trained_checkpoint(tmp_path / "run")  # unfinished until the fold is recorded
    checkpoints.write_final(tmp_path / "run", "new", swa_ran=False)
    assert checkpoints.trained_checkpoint(tmp_path / "run").name == "best.pt"
    with pytest.raises(RuntimeError, match="another configuration"):
        checkpoints.write_final(tmp_path / "run", "old", swa_ran=False)


_SCRIPT = textwrap.dedent(
    """
    import logging, sys, torch
    logging.basicConfig(level=logging.INFO)
    torch.set_num_threads(1)
    from hecktor.config import load_config, override
    from hecktor.training import engine
    from hecktor.tasks.seg import SegmentationTask
    from hecktor.data.folds import load_splits
    from hecktor.data.folds import folds_of
    params, prepared, splits, out, epochs = sys.argv[1:6]
    cfg = load_config(params, "tiny")
    task = SegmentationTask(cfg.seg, prepared)
    _, train_ids, val_ids = folds_of(load_splits(splits), "task1", "holdout")[0]
    train = override(cfg.seg.train, epochs=int(epochs))
    engine.fit(task, train_ids, val_ids, train, out, key="kill-test")
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
        if last.is_file() and checkpoints.load_checkpoint(last)["epoch"] >= 2:
            break
        time.sleep(0.05)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    stopped_at = checkpoints.load_checkpoint(last)["epoch"]
    assert stopped_at < 4, "the run finished before it could be killed"
    resumed = subprocess.run(command(tmp_path / "killed"), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {tmp_path / 'killed'} after epoch {stopped_at}" in resumed.stderr

    a = checkpoints.load_checkpoint(tmp_path / "straight" / "last.pt")
    b = checkpoints.load_checkpoint(last)
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
    engine.seed_everything(train.seed)  # the initial weights, as fit makes them
    torch.save(task.build_model().state_dict(), out / f"init{rank}.pt")
    result = engine.fit(task, train_ids, val_ids, train, out, key="ddp")
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
    last = checkpoints.load_checkpoint(out / "last.pt")
    assert last["epoch"] == 2 and _same_weights(last["model"], a)  # rank 0 checkpointed them
    init = torch.load(out / "init0.pt", weights_only=True)
    assert _same_weights(init, torch.load(out / "init1.pt", weights_only=True))
    weights = [k for k, v in init.items() if v.is_floating_point() and "running" not in k]
    moved = [k for k in weights if not torch.equal(init[k], a[k])]
    assert len(moved) == len(weights), sorted(set(weights) - set(moved))  # every weight trained


class _BalancedTask:
    """Only what the loader asks of a task: its name and its (balanced) batch sampler."""

    name = "balanced"
    labels = [1] * 10 + [0] * 6

    def sampler(self, dataset, seed):
        return BalancedBatchSampler(self.labels, batch_size=4, positives=2, seed=seed)


def _sampler_worker(rank, world, port, cfg, out):
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank)
    )
    _, world = engine.distributed()
    task = _BalancedTask()
    loop = engine._Loop(task, cfg, torch.device("cpu"), engine.Precision("fp32", "t"), rank, world)
    batches = [b.tolist() for b in loop.loader(list(range(len(task.labels))), epoch=1)]
    (out / f"rank{rank}.json").write_text(json.dumps(batches))
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_process_ddp_shares_out_the_balanced_batches(project_cfg, tmp_path):
    """Under DDP each process trains on its own share of the epoch, still 2 + 2 per batch."""
    cfg = project_cfg.hpv.train.model_copy(update={"num_workers": 0})
    torch.multiprocessing.spawn(
        _sampler_worker, args=(2, _free_port(), cfg, tmp_path), nprocs=2, join=True
    )
    shares = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    labels = _BalancedTask.labels
    assert len(shares[0]) == len(shares[1]) == 2  # 16 patients / 4 per batch / 2 processes
    for share in shares:
        assert all(sum(labels[i] for i in batch) == 2 and len(batch) == 4 for batch in share)
    seen = [tuple(b) for share in shares for b in share]
    assert len(set(seen)) == len(seen)  # no batch on both processes
    positives = [i for b in seen for i in b if labels[i] == 1]
    assert len(positives) == len(set(positives)) == 8  # one epoch shared out: none twice
    assert {i for b in seen for i in b if labels[i] == 0} == set(range(10, 16))  # oversampled


def test_the_cosine_schedule_is_a_function_of_the_position_only(project_cfg):
    cfg = project_cfg.seg.train.model_copy(
        update={"lr": 1e-3, "epochs": 4, "lr_schedule": "cosine"}
    )
    task, _, _ = _task_and_fold(project_cfg)
    loop = engine._Loop(task, cfg, torch.device("cpu"), engine.Precision("fp32", "test"), 0, 1)
    rates = [loop._learning_rate(e, s, 10) for e in range(1, 5) for s in range(1, 11)]
    assert rates[0] == pytest.approx(1e-3) and rates[-1] == pytest.approx(1e-5, rel=0.2)
    assert all(a >= b for a, b in itertools.pairwise(rates))  # never rises
    assert loop._learning_rate(3, 4, 10) == rates[2 * 10 + 3]  # same position, same rate
    constant = cfg.model_copy(update={"lr_schedule": "constant"})
    loop = engine._Loop(task, constant, torch.device("cpu"), engine.Precision("fp32", "t"), 0, 1)
    assert {loop._learning_rate(e, 1, 10) for e in (1, 4)} == {1e-3}


def test_each_loader_worker_draws_its_own_augmentation(project_cfg):
    """A worker starts with a copy of the main process's transform: without its own seed, every
    worker would cut the same crops and draw the same ops as the others."""
    task, train_ids, _ = _task_and_fold(project_cfg)
    cfg = project_cfg.seg.train.model_copy(
        update={"num_workers": 2, "batch_size": 1, "drop_last": False}
    )
    loop = engine._Loop(task, cfg, torch.device("cpu"), engine.Precision("fp32", "test"), 0, 1)
    dataset = task.train_dataset([train_ids[0]] * 4)  # one patient: only the draws differ

    def images():
        return [batch["image"] for batch, _ in loop.batches(dataset, loop.loader(dataset, 1))]

    first = images()
    assert not any(torch.equal(a, b) for a, b in itertools.combinations(first, 2))
    assert all(torch.equal(a, b) for a, b in zip(first, images(), strict=True))  # seeded


def test_augmentation_on_the_device_trains_and_logs_the_data_wait(project_cfg, tmp_path):
    seg = project_cfg.seg.model_copy(
        update={"augment": project_cfg.seg.augment.model_copy(update={"where": "device"})}
    )
    task = SegmentationTask(seg, project_cfg.paths.prepared)
    _, train_ids, _ = _task_and_fold(project_cfg)
    dataset = task.train_dataset(train_ids)
    assert dataset.device_transform is not None
    sample = dataset[0]  # the loader reads a region 1.25 times the patch, the device cuts it
    assert sample["image"].shape[1:] != task.patch
    cfg = seg.train.model_copy(update={"epochs": 1, "swa_epochs": 0})
    runs = [engine.fit(task, train_ids, [], cfg, tmp_path / f"run{i}", key="k") for i in range(2)]
    record = runs[0].history[0]
    assert 0 <= record["data_wait"] <= 1 and math.isfinite(record["train_loss"])
    weights = [checkpoints.load_checkpoint(r.out / "best.pt")["model"] for r in runs]
    assert _same_weights(*weights)  # seeded on the device too
