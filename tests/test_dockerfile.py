"""The Docker image's recipe: container mode, models from `hecktor export`, non-root, offline."""

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
    copies = [rest.split() for keyword, rest in steps if keyword == "COPY"]
    (models,) = [dst for *src, dst in copies if src == ["docker/models"]]
    env = " ".join(rest for keyword, rest in steps if keyword == "ENV")
    assert f"HECKTOR_MODELS={models}" in env
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert "!docker/models/" in ignore and "!src/" in ignore
    assert "docker/models/" in (ROOT / ".gitignore").read_text().splitlines()
    # the same torch version as the project pins
    pin = next(ln for ln in (ROOT / "pyproject.toml").read_text().splitlines() if '"torch==' in ln)
    version = pin.split("==")[1].split('"')[0]
    assert any(f"torch=={version}" in rest for keyword, rest in steps if keyword == "RUN")
    assert Path(models).is_absolute()
