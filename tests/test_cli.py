import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from hecktor import __version__
from hecktor.cli import build_parser, main
from hecktor.config import load_config, tuned_for
from hecktor.errors import UserError
from tests.conftest import ROOT


def _verbs(parser: argparse.ArgumentParser, prefix=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name)
                yield from _verbs(sub, (*prefix, name))


VERBS = list(_verbs(build_parser()))


def test_the_pipeline_verbs_exist():
    assert {
        ("synth",),
        ("validate",),
        ("prepare",),
        ("split",),
        ("evaluate", "seg"),
        ("ui",),
    } <= set(VERBS)


@pytest.mark.parametrize("verb", VERBS, ids=" ".join)
def test_every_verb_has_help(verb, capsys):
    with pytest.raises(SystemExit) as info:
        main([*verb, "--help"])
    assert info.value.code == 0
    assert "usage: hecktor" in capsys.readouterr().out


def test_console_script_is_installed():
    """The `hecktor` command the install puts beside this Python (not `python -m`)."""
    script = Path(sys.executable).parent / "hecktor"
    assert script.is_file(), f"{script}: not installed; pip install -e ."
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == f"hecktor {__version__}"
    bad = subprocess.run([str(script), "train", "nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and "invalid choice: 'nope'" in bad.stderr


def test_synth_prepare_split_from_the_command_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = ["--params", str(ROOT / "params.yaml"), "--profile", "tiny"]
    assert main(["synth", *params, "--out", "rel", "--patients", "5", "--seed", "7"]) == 0
    assert (tmp_path / "rel_oracle.csv").is_file()
    assert main(["validate", *params, "--release", "rel"]) == 0
    assert main(["prepare", *params, "--release", "rel", "--out", "prep", "--workers", "2"]) == 0
    assert main(["split", *params, "--prepared", "prep", "--out", "splits.json"]) == 0
    assert len(pd.read_csv(tmp_path / "prep" / "cases.csv")) == 5


def test_validate_reads_and_writes_nothing(tmp_path, release_copy, monkeypatch):
    """validate only reads: no file appears or changes, in the release or where it runs."""
    monkeypatch.chdir(tmp_path)

    def snapshot() -> dict[str, tuple[int, int]]:
        return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in tmp_path.rglob("*")}

    before = snapshot()
    params = ["--params", str(ROOT / "params.yaml"), "--profile", "tiny"]
    assert main(["validate", *params, "--release", str(release_copy)]) == 0
    assert snapshot() == before


def test_bad_release_exits_non_zero_with_the_patient_named(tmp_path, release_copy, caplog):
    victim = sorted((release_copy / "Task 1").glob("*/*__PT.nii.gz"))[0]
    victim.write_bytes(b"garbage")
    params = ["--params", str(ROOT / "params.yaml"), "--profile", "tiny"]
    assert main(["validate", *params, "--release", str(release_copy)]) == 2
    assert victim.name in caplog.text and victim.parent.name in caplog.text
    caplog.clear()
    out = tmp_path / "prepared"
    assert main(["prepare", *params, "--release", str(release_copy), "--out", str(out)]) == 2
    assert victim.name in caplog.text
    assert not out.exists()


def test_a_profile_without_a_params_file_is_an_error_naming_the_file(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    assert main(["synth", "--profile", "tiny", "--out", "rel"]) == 2
    assert str(tmp_path / "params.yaml") in caplog.text and "--profile tiny" in caplog.text
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("verb", ["synth", "prepare"])
def test_an_output_folder_with_a_foreign_file_is_refused_before_any_work(
    tmp_path, release_dir, verb, caplog
):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    params = ["--params", str(ROOT / "params.yaml"), "--profile", "tiny"]
    extra = ["--release", str(release_dir)] if verb == "prepare" else ["--patients", "4"]
    assert main([verb, *params, *extra, "--out", str(out)]) == 2
    assert "notes.txt" in caplog.text and str(out) in caplog.text
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no oracle, no temporary folder
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert (out / "notes.txt").read_text() == "mine"


def test_synth_refuses_an_oracle_path_that_is_not_an_oracle(tmp_path, caplog):
    table = tmp_path / "clinical.csv"
    table.write_text("PatientID,Age\nA-1,50\n")
    params = ["--params", str(ROOT / "params.yaml"), "--profile", "tiny"]
    args = ["synth", *params, "--patients", "4", "--out", str(tmp_path / "rel")]
    assert main([*args, "--oracle", str(table)]) == 2
    assert table.read_text() == "PatientID,Age\nA-1,50\n" and not (tmp_path / "rel").exists()


def test_bad_params_exit_non_zero_with_the_key_named(tmp_path, caplog):
    bad = tmp_path / "params.yaml"
    bad.write_text("split:\n  folds: 1\n")
    assert main(["split", "--params", str(bad)]) == 2
    assert "split.folds" in caplog.text


def test_common_options_count_before_and_after_the_verb():
    parser = build_parser()
    before = parser.parse_args(["--params", "a.yaml", "--profile", "tiny", "train", "seg"])
    after = parser.parse_args(["train", "seg", "--params", "a.yaml", "-v"])
    neither = parser.parse_args(["train", "seg"])
    assert (before.params, before.profile) == ("a.yaml", "tiny")
    assert (after.params, after.verbose) == ("a.yaml", True)
    assert (neither.params, neither.profile, neither.verbose) == ("params.yaml", None, False)


def test_config_shows_what_a_stage_trains_with_and_where_each_value_comes_from(
    tmp_path, monkeypatch, capsys, caplog
):
    monkeypatch.chdir(tmp_path)
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    demo = load_config("params.yaml", "demo")
    Path("tuned").mkdir()
    record = {"task": "seg", "study": "seg-demo-x", "trial": 1, "values": {"train.lr": 0.002},
              "tuned_for": tuned_for(demo, "seg")}  # fmt: skip
    Path("tuned/seg.yaml").write_text(yaml.safe_dump(record))

    assert main(["config", "--profile", "paper"]) == 0
    out = capsys.readouterr().out
    shown = yaml.safe_load(out)
    assert shown == load_config("params.yaml", "paper").model_dump(mode="json")
    for task, batch in (("seg", 2), ("hpv", 4), ("rfs", 16)):
        train = shown[task]["train"]
        assert (train["lr"], train["weight_decay"], train["batch_size"]) == (1e-4, 0.0, batch)
    assert "# tuned/seg.yaml: not applied (tuned for profile demo, not paper)" in out
    assert "patients: 40  # profile paper" in out and "# tuned:" not in out

    assert main(["config"]) == 0  # the demo: the tuned value, marked
    out = capsys.readouterr().out
    assert yaml.safe_load(out)["seg"]["train"]["lr"] == 0.002
    assert "lr: 0.002  # tuned: tuned/seg.yaml, trial 1 of seg-demo-x" in out
    # a command that trains with it refuses it under another profile, naming file and difference
    assert main(["train", "seg", "--profile", "paper", "--no-track"]) == 2
    assert "tuned/seg.yaml: tuned for profile demo, not paper" in caplog.text


def test_exit_codes_tell_a_crash_from_bad_input(tmp_path, monkeypatch, caplog):
    """0 done, 1 crashed (traceback under -v), 2 bad input or config; 3 is predict's (test_batch)."""
    import hecktor.cli as cli

    params = ["--params", str(ROOT / "params.yaml"), "--profile", "tiny"]

    def crash(args, cfg):
        raise RuntimeError("a bug")

    monkeypatch.setattr(cli, "_validate", crash)
    assert main(["validate", *params, "--release", str(tmp_path)]) == 1
    assert "crashed: RuntimeError: a bug (run again with -v" in caplog.text
    assert "Traceback" not in caplog.text
    caplog.clear()
    assert main(["validate", *params, "--release", str(tmp_path), "-v"]) == 1
    assert "Traceback" in caplog.text and 'raise RuntimeError("a bug")' in caplog.text

    def bad(args, cfg):
        raise UserError("patient X: file Y is broken")

    monkeypatch.setattr(cli, "_validate", bad)
    caplog.clear()
    assert main(["validate", *params, "--release", str(tmp_path)]) == 2
    assert "patient X: file Y is broken" in caplog.text and "Traceback" not in caplog.text


def test_relative_paths_are_the_params_files_and_tracking_uri_wins(tmp_path, monkeypatch, capsys):
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(ROOT / "params.yaml", project / "params.yaml")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["config", "--params", str(project / "params.yaml")]) == 0
    paths = yaml.safe_load(capsys.readouterr().out)["paths"]
    assert paths["mlruns"] == str(project / "mlruns") and paths["tuned"] == str(project / "tuned")
    monkeypatch.chdir(project)  # from the project folder (the DVC stages): as written
    assert load_config("params.yaml").paths.mlruns == Path("mlruns")

    uri = f"sqlite:///{tmp_path / 'other.db'}"
    assert main(["config", "--params", str(project / "params.yaml"), "--tracking-uri", uri]) == 0
    assert os.environ["MLFLOW_TRACKING_URI"] == uri


@pytest.mark.parametrize(
    ("argv", "skip", "strict"),
    [
        (["train", "rfs"], (), ("seg", "hpv", "rfs")),
        (["tune", "hpv"], ("hpv",), ("seg",)),
        # DVC derives Task 2's inputs before it tunes Task 2: its own file is not read yet
        (["derive", "rfs"], ("rfs",), ("seg", "hpv")),
        (["register", "hpv"], (), ("seg", "hpv")),
        (["prepare"], (), ()),
    ],
)
def test_a_command_refuses_only_the_tuned_files_it_trains_or_scores_with(argv, skip, strict):
    from hecktor.cli import _tuned_scope

    assert _tuned_scope(build_parser().parse_args(argv)) == (skip, strict)


def test_a_bad_option_value_is_bad_input_naming_its_key(tmp_path, caplog):
    params = ["--params", str(ROOT / "params.yaml"), "--profile", "tiny"]
    assert main(["synth", *params, "--patients", "3", "--out", str(tmp_path / "rel")]) == 2
    assert "synth.patients: Input should be greater than or equal to 4 (got 3)" in caplog.text
    assert not (tmp_path / "rel").exists()
