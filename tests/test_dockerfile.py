"""The Docker image's recipe: container mode, models from `hecktor export`, non-root, offline."""

import re
from pathlib import Path

from tests.conftest import ROOT


def _instructions() -> list[tuple[str, str]]:
    lines = [ln.strip() for ln in (ROOT / "Dockerfile").read_text().splitlines()]
    joined = " ".join(ln.removesuffix("\\") if ln.endswith("\\") else ln + "\n" for ln in lines)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def test_entry_point_is_the_container_mode_as_a_non_root_user():
    steps = _instructions()
    assert steps[-1] == ("ENTRYPOINT", '["hecktor", "predict", "--container"]')
    users = [rest for keyword, rest in steps if keyword == "USER"]
    assert users and users[-1] not in {"root", "0"}


def test_models_come_from_an_export_folder_that_predict_reads_offline():
    steps = _instructions()
    env = " ".join(rest for keyword, rest in steps if keyword == "ENV")
    models = env.split("HECKTOR_MODELS=")[1].split()[0]
    assert Path(models).is_absolute()
    runs = " ".join(rest for keyword, rest in steps if keyword == "RUN")
    # a build without exported models stops with what to run, before any install
    check = next(i for i, (k, rest) in enumerate(steps) if k == "RUN" and "sources.json" in rest)
    assert (
        "hecktor export --out docker/models" in steps[check][1]
        and f"mv docker/models {models}" in runs
    )
    assert check < next(
        i for i, (k, rest) in enumerate(steps) if k == "RUN" and "pip install" in rest
    )
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert "!docker/" in ignore and "!src/" in ignore and "!constraints.txt" in ignore
    assert "docker/models/" in (ROOT / ".gitignore").read_text().splitlines()
    assert (ROOT / "docker" / "README.md").is_file()  # docker/ exists on a fresh clone


def test_the_image_is_slim_pinned_and_installs_the_tested_versions():
    steps = _instructions()
    (base,) = [rest for keyword, rest in steps if keyword == "FROM"]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", base), base
    installs = [rest for keyword, rest in steps if keyword == "RUN" and "pip install" in rest]
    project = [rest for rest in installs if "pip install -c constraints.txt ." in rest]
    assert project and not any("[" in rest for rest in project)  # no extras: predict's needs only
    pin = next(ln for ln in (ROOT / "pyproject.toml").read_text().splitlines() if '"torch==' in ln)
    version = pin.split("==")[1].split('"')[0]
    assert any(f"torch=={version}" in rest for rest in installs)
    assert f"torch=={version}" in (ROOT / "constraints.txt").read_text().splitlines()
