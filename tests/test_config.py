from pathlib import Path

import pytest
import yaml

from hecktor.config import (
    Config,
    ConfigError,
    apply_tuned,
    load_config,
    override,
    resolve,
    tuned_for,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("profile", ["tiny", "demo", "paper", "paper_tuned"])
def test_every_profile_resolves(profile):
    cfg = load_config(ROOT / "params.yaml", profile)
    assert cfg.profile == profile
    assert cfg.split.folds >= 2


def test_default_profile_is_demo():
    assert Config().profile == "demo"
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw.pop("profile", None)
    assert resolve(raw).profile == "demo"


def test_profile_overrides_defaults_deeply():
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    tiny = resolve(raw, "tiny")
    assert tiny.prepare.spacing_mm == tuple(raw["profiles"]["tiny"]["prepare"]["spacing_mm"])
    # a key the profile does not set keeps the shared default
    assert tiny.prepare.ct_window_hu == tuple(raw["prepare"]["ct_window_hu"])


def test_paper_profile_follows_the_paper():
    cfg = load_config(ROOT / "params.yaml", "paper")
    assert cfg.prepare.spacing_mm == (1.0, 1.0, 1.0)
    assert cfg.prepare.crop_mm == (288.0, 288.0, 288.0)
    assert cfg.split.folds == 5
    assert cfg.split.test_fraction == 0  # 5 folds over all Task 2 and 3 patients, as the paper
    assert load_config(ROOT / "params.yaml", "demo").split.test_fraction > 0  # its honest figure


def test_unknown_key_fails_with_its_name():
    with pytest.raises(ConfigError, match=r"prepare\.spacing_mmm"):
        resolve({"prepare": {"spacing_mmm": [1, 1, 1]}})


def test_bad_value_fails_with_its_name():
    with pytest.raises(ConfigError, match=r"split\.folds"):
        resolve({"split": {"folds": 1}})
    with pytest.raises(ConfigError, match=r"prepare\.spacing_mm"):
        resolve({"prepare": {"spacing_mm": [0, 1, 1]}})


def test_unknown_profile_fails():
    with pytest.raises(ConfigError, match="unknown profile 'huge'"):
        resolve({"profiles": {"tiny": {}}}, "huge")


def test_a_bad_value_fails_whichever_profile_is_chosen():
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["profiles"]["paper"]["split"]["folds"] = 1  # only paper is wrong
    with pytest.raises(ConfigError, match=r"profile paper.*\n.*split\.folds"):
        resolve(raw, "tiny")


def test_a_bad_base_value_fails_even_when_every_profile_overrides_it():
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["split"]["folds"] = 1
    for profile in raw["profiles"].values():
        profile.setdefault("split", {})["folds"] = 3
    with pytest.raises(ConfigError, match=r"shared sections.*\n.*split\.folds"):
        resolve(raw, "tiny")


def test_missing_file_fails(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_digest_is_stable_and_sensitive():
    a, b = Config(), Config()
    assert a.digest() == b.digest()
    assert resolve({"split": {"folds": 4}}).digest() != a.digest()


def test_search_space_keys_must_exist_in_the_task_section():
    with pytest.raises(ConfigError, match=r"tune\.seg\.space: unknown key 'train\.lrr'"):
        resolve({"tune": {"seg": {"space": {"train.lrr": {"low": 1e-4, "high": 1e-3}}}}})
    with pytest.raises(ConfigError, match="low < high"):
        resolve({"tune": {"hpv": {"space": {"dropout": {"low": 0.5, "high": 0.1}}}}})
    with pytest.raises(ConfigError, match="choices"):
        resolve({"tune": {"rfs": {"space": {"mlp_width": {"kind": "categorical"}}}}})


def _tuned(cfg: Config, task: str, values: dict, folder: Path) -> Config:
    """``cfg`` reading tuned files from ``folder``, where ``task``'s file was tuned for ``cfg``."""
    cfg = cfg.model_copy(update={"paths": override(cfg.paths, tuned=folder)})
    record = {"task": task, "study": "s", "trial": 3, "values": values,
              "tuned_for": tuned_for(cfg, task)}  # fmt: skip
    (folder / f"{task}.yaml").write_text(yaml.safe_dump(record))
    return cfg


def test_tuned_values_are_set_over_the_params(tmp_path):
    cfg = Config().model_copy(update={"paths": override(Config().paths, tuned=tmp_path)})
    assert apply_tuned(cfg) == cfg  # no tuned files: the params as written
    cfg = _tuned(cfg, "seg", {"train.lr": 0.002, "augment.rotate_deg": 5.0}, tmp_path)
    tuned = apply_tuned(cfg)
    assert tuned.seg.train.lr == 0.002 and tuned.seg.augment.rotate_deg == 5.0
    assert tuned.seg.train.epochs == cfg.seg.train.epochs and tuned.hpv == cfg.hpv
    assert apply_tuned(cfg, skip=("seg",)) == cfg
    _tuned(cfg, "hpv", {"dropout_rate": 0.3}, tmp_path)
    with pytest.raises(ConfigError, match=r"hpv\.yaml: unknown key 'dropout_rate'"):
        apply_tuned(cfg)


def test_a_tuned_file_applies_only_to_the_configuration_it_was_tuned_for(tmp_path, caplog):
    demo = _tuned(load_config(ROOT / "params.yaml", "demo"), "seg", {"train.lr": 0.002}, tmp_path)
    assert apply_tuned(demo).seg.train.lr == 0.002
    # how a run goes is not what it learns: the file still applies
    faster = demo.model_copy(update={"seg": with_train(demo.seg, num_workers=4, device="cpu")})
    assert apply_tuned(faster).seg.train.lr == 0.002

    paper = load_config(ROOT / "params.yaml", "paper")
    paper = paper.model_copy(update={"paths": demo.paths})
    with pytest.raises(ConfigError, match=r"seg\.yaml: tuned for profile demo, not paper"):
        apply_tuned(paper)
    caplog.set_level("WARNING")
    ignored = apply_tuned(paper, strict=("hpv", "rfs"))  # seg's file is not this command's
    assert ignored.seg.train.lr == paper.seg.train.lr == 1e-4
    assert "seg.yaml not applied: tuned for profile demo" in caplog.text

    longer = demo.model_copy(update={"seg": with_train(demo.seg, epochs=40)})
    with pytest.raises(ConfigError, match=r"other seg settings: train\.epochs 30 \(now 40\)"):
        apply_tuned(longer)
    space = dict(demo.tune.seg.space)
    space["train.lr"] = space["train.lr"].model_copy(update={"high": 1e-2})
    wider = demo.model_copy(
        update={"tune": override(demo.tune, seg=override(demo.tune.seg, space=space))}
    )
    with pytest.raises(ConfigError, match=r"other tune\.seg: space\.train\.lr\.high"):
        apply_tuned(wider)
    (tmp_path / "seg.yaml").write_text("task: seg\nvalues:\n  train.lr: 0.002\n")
    with pytest.raises(ConfigError, match="does not record the configuration"):
        apply_tuned(demo)


def with_train(section, **values):
    return section.model_copy(update={"train": override(section.train, **values)})


def test_paper_profile_trains_the_paper_recipe_and_paper_tuned_tunes_it():
    paper = load_config(ROOT / "params.yaml", "paper")
    assert not paper.tune.enabled
    for task, batch in (("seg", 2), ("hpv", 4), ("rfs", 16)):
        train = getattr(paper, task).train
        assert (train.lr, train.weight_decay, train.batch_size, train.epochs) == (
            1e-4,
            0,
            batch,
            500,
        )
    tuned = load_config(ROOT / "params.yaml", "paper_tuned")
    assert tuned.tune.enabled
    # the same recipe, with the studies switched on
    same = tuned.model_copy(
        update={"profile": "paper", "tune": override(tuned.tune, enabled=False)}
    )
    assert same == paper
    for task in ("seg", "rfs"):
        decay = getattr(tuned.tune, task).space["train.weight_decay"]
        assert decay.or_zero and decay.holds(0.0) and not decay.holds(1e-9)


def test_a_digest_of_some_sections_ignores_the_others():
    cfg = Config()
    other = cfg.model_copy(update={"rfs": cfg.rfs.model_copy(update={"dropout": 0.4})})
    assert other.digest() != cfg.digest()
    assert other.digest(("prepare", "seg")) == cfg.digest(("prepare", "seg"))
    assert other.digest(("seg", "rfs")) != cfg.digest(("seg", "rfs"))


def test_a_billion_laughs_params_file_is_refused_at_once_in_one_short_line(tmp_path):
    """Nested aliases expanding to 10^9 values once ran 70 s to a MemoryError."""
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for level, prev in zip("bcdefghi", "abcdefgh", strict=True):
        lines.append(f"{level}: &{level} [{', '.join([f'*{prev}'] * 10)}]")
    lines.append("split: *i")
    path = tmp_path / "params.yaml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "aliases expand to" in str(err.value) and len(str(err.value)) < 300
    path.write_text("split: " + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_config(path)


def test_an_error_quotes_the_offending_key_not_the_whole_value(tmp_path):
    with pytest.raises(ConfigError) as err:
        resolve({"split": {"folds": {f"k{i}": "x" * 100 for i in range(1000)}}})
    assert "split.folds" in str(err.value) and len(str(err.value)) < 400
