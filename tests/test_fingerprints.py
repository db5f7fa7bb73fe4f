"""Digests: one per concept, each changing exactly when what it stands for changes."""

from pathlib import Path

import yaml

from hecktor.fingerprints import (
    INFERENCE_CODE,
    PACKAGE,
    TRAINING_CODE,
    file_sha256,
    files_digest,
    inference_code,
    json_digest,
    prepared_digest,
    source_digest,
    training_code,
)
from hecktor.tasks import TASKS
from tests.conftest import ROOT


def test_file_digests_follow_bytes_and_order(tmp_path):
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"weights a")
    b.write_bytes(b"weights b")
    assert len(file_sha256(a)) == 64
    assert files_digest([a, b]) != files_digest([b, a])
    before = files_digest([a, b])
    b.write_bytes(b"weights B")
    assert files_digest([a, b]) != before


def test_json_digest_ignores_key_order_only():
    assert json_digest({"a": 1, "b": [1, 2]}) == json_digest({"b": [1, 2], "a": 1})
    assert json_digest({"a": 1, "b": [1, 2]}) != json_digest({"a": 1, "b": [2, 1]})
    assert len(json_digest({}, 10)) == 10


def test_prepared_digest_follows_case_metadata(tmp_path):
    (tmp_path / "P-1").mkdir()
    (tmp_path / "P-1" / "meta.json").write_text("{}")
    before = prepared_digest(tmp_path)
    (tmp_path / "P-1" / "meta.json").write_text('{"pet_mean": 1}')
    assert prepared_digest(tmp_path) != before


def test_source_digest_follows_the_named_modules_only(tmp_path):
    for name in ("training/engine.py", "models/net.py", "inference/batch.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x = 1\n")
    parts = ("training", "models/net.py")
    key = source_digest(tmp_path, parts)
    (tmp_path / "inference" / "batch.py").write_text("x = 2\n")  # inference is not training code
    assert source_digest(tmp_path, parts) == key
    (tmp_path / "training" / "engine.py").write_text("x = 2\n")
    edited = source_digest(tmp_path, parts)
    assert edited != key
    (tmp_path / "training" / "engine.py").rename(tmp_path / "training" / "loop.py")
    assert source_digest(tmp_path, parts) != edited  # a renamed module counts too
    assert source_digest(tmp_path, (*parts, "inference/batch.py")) != source_digest(tmp_path, parts)


def test_training_stages_rerun_on_every_module_that_keys_their_checkpoints():
    """DVC must rerun training whenever the code fingerprint changes, or it would keep stale models."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    extra = {"tune": ("tuning.py",), "derive": ("derive.py",)}
    checked = 0
    for name, stage in stages.items():
        kind = name.split("_")[0]
        if kind not in ("tune", "train", "derive"):
            continue
        deps = [d.removeprefix("src/hecktor/") for d in stage["deps"] if d.startswith("src/")]
        for module in TRAINING_CODE + extra.get(kind, ()):
            assert any(module == d or module.startswith(f"{d}/") for d in deps), (name, module)
        checked += 1
    # a tune and a train stage per task, and a derive stage per task with derived inputs
    assert checked == 2 * len(TASKS) + sum(spec.inputs is not None for spec in TASKS.values())


def test_the_training_code_digest_is_the_listed_modules_and_the_extra_ones():
    assert training_code() == source_digest(PACKAGE, TRAINING_CODE)
    assert training_code(("tuning.py",)) == source_digest(PACKAGE, (*TRAINING_CODE, "tuning.py"))
    assert training_code(("tuning.py",)) != training_code()
    assert len(json_digest({"a": 1})) == 16 and len(files_digest([])) == 16
    assert json_digest({"when": Path("x")}) == json_digest({"when": "x"})  # any value, as text


def test_short_digests_have_their_stated_lengths(tmp_path):
    (tmp_path / "m.py").write_text("x = 1\n")
    (tmp_path / "cases.csv").write_text("PatientID\nA-1\n")
    assert len(source_digest(tmp_path, ("m.py",))) == 12
    assert len(prepared_digest(tmp_path)) == 12


def test_the_inference_code_digest_covers_every_module_predict_runs():
    """A module `predict` imports but the digest leaves out would let a rerun reuse results
    that code made differently."""
    import grimp

    graph = grimp.build_graph("hecktor")
    roots = ["hecktor.inference.batch", *{spec.predictor.split(":")[0] for spec in TASKS.values()}]
    needed = set(roots).union(*(graph.find_upstream_modules(m) for m in roots))
    covered = {
        ".".join(("hecktor", *p.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(
            ".__init__"
        )
        for part in INFERENCE_CODE
        for p in ((PACKAGE / part).rglob("*.py") if (PACKAGE / part).is_dir() else [PACKAGE / part])
    }
    assert {m for m in needed if m.startswith("hecktor")} <= covered
    assert inference_code() == source_digest(PACKAGE, INFERENCE_CODE)
