"""Bundles of the trained models, the MLflow registry and the champion rule."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch
from mlflow.tracking import MlflowClient

from hecktor import tracking
from hecktor.bundle import FORMAT, Bundle, load_bundle, write_bundle
from hecktor.inference.sources import Bundles, export_bundles, load_bundles, requested
from hecktor.register import register_model
from hecktor.tasks import TASKS
from tests.inference.conftest import register_all

NAMES = {name: spec.registry_name for name, spec in TASKS.items()}


@pytest.mark.slow
def test_bundles_hold_weights_config_metrics_and_versions(bundle_dir, trained_cfg):
    for task, name in NAMES.items():
        bundle = load_bundle(bundle_dir / name)
        manifest = bundle.manifest
        assert manifest["task"] == task and manifest["name"] == name
        assert manifest["config"]["prepare"] == trained_cfg.prepare.model_dump(mode="json")
        assert {"code", "data", "prepared", "metrics", "score", "members"} <= set(manifest)
        for member in bundle.members:  # weights only: loads with weights_only=True
            state = torch.load(bundle.root / member["file"], weights_only=True)
            assert "model" in state
    assert len(load_bundle(bundle_dir / "hecktor-hpv").members) == trained_cfg.split.folds
    rfs = load_bundle(bundle_dir / "hecktor-rfs")
    assert rfs.manifest["mode"] == "pred"
    assert all(m["risk_std"] > 0 for m in rfs.members)


@pytest.mark.slow
def test_a_broken_bundle_is_named(bundle_dir, tmp_path):
    broken = tmp_path / "hecktor-seg"
    shutil.copytree(bundle_dir / "hecktor-seg", broken)
    (broken / "model.pt").unlink()
    with pytest.raises(ValueError, match=r"model\.pt: weights file missing"):
        load_bundle(broken)
    with pytest.raises(ValueError, match="not a model bundle"):
        load_bundle(tmp_path)


def _with_score(src, dst, value):
    """A copy of a bundle with another CV score (and so another digest)."""
    shutil.copytree(src, dst)
    manifest = json.loads((dst / "bundle.json").read_text())
    manifest["score"]["value"] = value
    manifest["data"] = f"{manifest['data']}-{dst.name}"
    (dst / "bundle.json").write_text(json.dumps(manifest))
    return load_bundle(dst)


@pytest.mark.slow
def test_champion_moves_only_to_a_better_cross_validated_score(bundle_dir, store, tmp_path, caplog):
    src = bundle_dir / "hecktor-seg"
    tags = {"profile": "tiny"}
    first = register_model(_with_score(src, tmp_path / "a", 0.5), store, tags)
    assert (first["version"], first["alias"]) == ("1", "champion")
    again = register_model(load_bundle(tmp_path / "a"), store, tags)
    assert again == first  # an unchanged bundle is not registered twice
    with caplog.at_level(logging.WARNING, logger="hecktor.tracking"):
        worse = register_model(_with_score(src, tmp_path / "b", 0.4), store, tags)
    assert (worse["version"], worse["alias"]) == ("2", "challenger")
    assert (
        "trained on other data" in caplog.text and "'hecktor-seg', 'champion', '2'" in caplog.text
    )
    tie = register_model(_with_score(src, tmp_path / "c", 0.5), store, tags)
    assert tie["alias"] == "challenger"
    better = register_model(_with_score(src, tmp_path / "d", 0.6), store, tags)
    assert (better["version"], better["alias"]) == ("4", "champion")

    client = MlflowClient(tracking.tracking_uri(store))
    champion = client.get_model_version_by_alias("hecktor-seg", "champion")
    assert str(champion.version) == "4" and champion.tags["cv_score"] == "0.6"
    assert {"bundle_digest", "code", "data", "cv_metric", "profile"} <= set(champion.tags)
    assert str(client.get_model_version_by_alias("hecktor-seg", "challenger").version) == "3"


@pytest.mark.slow
def test_predict_loads_the_champions_from_the_registry_and_export_copies_them(
    bundle_dir, store, tmp_path, monkeypatch
):
    register_all(bundle_dir, store)
    bundles = load_bundles(store, tmp_path / "cache")
    assert bundles["seg"].digest() == load_bundle(bundle_dir / "hecktor-seg").digest()
    assert bundles.sources["rfs"] == "models:/hecktor-rfs@champion (version 1)"
    assert bundles.versions["rfs"] == "1" and bundles.describe()["rfs"]["version"] == "1"
    exported = export_bundles(bundles, tmp_path / "export")
    offline = load_bundles(tmp_path / "no-store", tmp_path / "cache2", models_dir=exported)
    assert offline.sources == bundles.sources and offline.versions == bundles.versions
    assert offline["hpv"].digest() == bundles["hpv"].digest()
    monkeypatch.delenv(tracking.ENV, raising=False)  # MLflow exported the first store's URI
    with pytest.raises(ValueError, match=r"models:/hecktor-seg@champion: not found"):
        load_bundles(tmp_path / "empty", tmp_path / "cache3")


def _bundle(root, task: str, config: dict) -> Bundle:
    manifest = {"format": FORMAT, "task": task, "name": f"hecktor-{task}", "config": config,
                "members": []}  # fmt: skip
    return load_bundle(write_bundle(root / task, manifest, {}))


def test_bundles_must_agree_on_every_setting_they_share(tmp_path):
    prepare, seg = {"spacing_mm": [1, 1, 1]}, {"network": "dynunet"}
    seg_bundle = _bundle(tmp_path / "a", "seg", {"prepare": prepare, "seg": seg})
    hpv = _bundle(tmp_path / "a", "hpv", {"prepare": prepare, "seg": seg, "hpv": {"dropout": 0}})
    Bundles({"seg": seg_bundle, "hpv": hpv}, {}).check()
    other = _bundle(tmp_path / "b", "hpv", {"prepare": prepare, "seg": {"network": "segresnet"},
                                            "hpv": {"dropout": 0}})  # fmt: skip
    with pytest.raises(ValueError, match=r"b/hpv: its 'seg' settings differ from .*a/seg's"):
        Bundles({"seg": seg_bundle, "hpv": other}, {}).check()


def test_a_prediction_runs_the_tasks_asked_for_with_their_upstream_tasks():
    assert requested(["hpv"]) == ("seg", "hpv")
    assert requested(["rfs", "seg"]) == ("seg", "hpv", "rfs")
    assert requested(None) == tuple(TASKS)
    with pytest.raises(ValueError, match=r"unknown task\(s\) \['nope'\]"):
        requested(["nope"])


@pytest.mark.slow
def test_champions_form_one_lineage_and_predict_refuses_a_mixed_set(bundle_dir, store, tmp_path):
    """A better Task 1 model takes Task 3 and Task 2 with it (they are registered on it); a
    champion moved by hand that breaks the lineage is refused by predict, naming both."""
    first = register_all(bundle_dir, store)
    score = json.loads((bundle_dir / "hecktor-seg" / "bundle.json").read_text())["score"]["value"]
    better = _with_score(bundle_dir / "hecktor-seg", tmp_path / "seg-2", score + 0.1)
    seg = register_model(better, store, {})
    upstream = {"seg": seg["uri"]}
    hpv = register_model(load_bundle(bundle_dir / "hecktor-hpv"), store, {}, upstream)
    rfs = register_model(load_bundle(bundle_dir / "hecktor-rfs"), store, {},
                         upstream | {"hpv": hpv["uri"]})  # fmt: skip
    assert [r["alias"] for r in (seg, hpv, rfs)] == ["champion"] * 3  # hpv, rfs: same scores
    assert {r["version"] for r in (seg, hpv, rfs)} == {"2"}
    bundles = load_bundles(store, tmp_path / "cache")
    assert bundles.versions == {"seg": "2", "hpv": "2", "rfs": "2"}

    worse = register_model(_with_score(bundle_dir / "hecktor-seg", tmp_path / "seg-3", -1.0),
                           store, {})  # fmt: skip
    hpv3 = register_model(load_bundle(bundle_dir / "hecktor-hpv"), store, {},
                          {"seg": worse["uri"]})  # fmt: skip
    assert (worse["alias"], hpv3["alias"]) == ("challenger", "challenger")  # beside its seg

    client = MlflowClient(tracking.tracking_uri(store))
    client.set_registered_model_alias("hecktor-seg", "champion", first["seg"]["version"])
    with pytest.raises(ValueError, match=r"hecktor-hpv@champion \(version 2\) was registered on "
                       r"another seg model than models:/hecktor-seg@champion \(version 1\)"):  # fmt: skip
        load_bundles(store, tmp_path / "cache-2")
    assert load_bundles(store, tmp_path / "cache-3", tasks=["seg"]).versions == {"seg": "1"}


def _flip(path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.slow
def test_models_that_differ_from_what_was_registered_or_exported_are_refused(
    bundle_dir, store, tmp_path
):
    register_all(bundle_dir, store)
    bundles = load_bundles(store, tmp_path / "cache")
    exported = export_bundles(bundles, tmp_path / "export")
    recorded = json.loads((exported / "sources.json").read_text())
    assert recorded["hpv"]["upstream_digests"] == {"seg": bundles["seg"].digest()}

    manifest = exported / "hecktor-hpv" / "bundle.json"  # a changed manifest, weights intact
    manifest.write_text(manifest.read_text().replace('"name"', '"name" ', 1))
    with pytest.raises(ValueError, match=r"hecktor-hpv: its files differ from those"):
        load_bundles(tmp_path / "no-store", tmp_path / "c1", models_dir=exported)

    stored = next(
        p.parent / "model.pt"
        for p in (store / "artifacts").rglob("bundle.json")
        if json.loads(p.read_text())["task"] == "seg"
    )
    _flip(stored)  # one bit of the registry's own copy
    with pytest.raises(ValueError, match=r"model\.pt: its bytes differ from those the bundle"):
        load_bundles(store, tmp_path / "c2", tasks=["seg"])


@pytest.mark.slow
def test_register_refuses_a_damaged_weights_file_naming_it(trained_cfg, tmp_path):
    from hecktor.config import override
    from hecktor.register import build_bundles

    models = tmp_path / "models"
    shutil.copytree(trained_cfg.paths.models / "seg", models / "seg")
    cfg = override(trained_cfg, paths=override(trained_cfg.paths, models=models))
    final = json.loads((models / "seg" / "holdout" / "final.json").read_text())
    weights = models / "seg" / "holdout" / final["weights"]
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated
    with pytest.raises(ValueError, match=rf"{weights}: its bytes differ"):
        build_bundles(cfg, tmp_path / "bundles", ["seg"])
    assert not (tmp_path / "bundles").exists()


@pytest.mark.slow
def test_a_copied_project_reads_and_writes_only_itself(bundle_dir, tmp_path, monkeypatch):
    """A project copied elsewhere, the original then moved away: the copy's models load, and a
    new version registers, from and into the copy alone."""
    monkeypatch.delenv(tracking.ENV, raising=False)  # another test's store, exported by MLflow
    original = tmp_path / "project"
    register_all(bundle_dir, original / "mlruns")
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    original.rename(tmp_path / "away")  # its path no longer leads anywhere
    monkeypatch.delenv(tracking.ENV, raising=False)  # MLflow exported the original's URI
    bundles = load_bundles(copy / "mlruns", tmp_path / "cache")
    assert bundles.versions == {"seg": "1", "hpv": "1", "rfs": "1"}
    better = _with_score(bundle_dir / "hecktor-seg", tmp_path / "seg-2", 2.0)
    assert register_model(better, copy / "mlruns", {})["alias"] == "champion"
    assert not original.exists()  # nothing read or written there
    assert all(
        str(original) + "/" not in p.read_text(errors="ignore")
        for p in (copy / "mlruns").rglob("*")
        if p.is_file() and p.suffix in (".db", ".yaml", ".json", "")
    )
