"""Every digest the package keys work by, one name per concept.

* :func:`file_sha256`: the bytes of one file (a new patient's image, a weights file).
* :func:`files_digest`: several files' bytes in order (the weights a derived input comes from).
* :func:`json_digest`: a JSON-able value (a resume key, a study's settings, a trial's values).
* :func:`source_digest` / :func:`training_code`: the package's own source; a checkpoint, a study or
  a bundle made by other training code is not reused. :func:`inference_code`: the same for a new
  patient's prediction, which ``predict`` reuses only when made by the same code.
* :func:`prepared_digest`: the prepared cohort (every case's metadata), the data version that
  checkpoints, studies, bundles and MLflow runs carry.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

PACKAGE = Path(__file__).resolve().parent

# The modules (package-relative) whose code decides what training learns: their digest keys
# resumable checkpoints, studies and bundles. Inference, reporting or CLI edits leave trained models
# valid. The training and tuning stages of dvc.yaml depend on the same files (a test holds them
# together).
TRAINING_CODE = (
    "training",
    "tasks",
    "networks.py",
    "labels.py",
    "lesions.py",
    "data/samplers.py",
    "planning.py",
    "data/folds.py",
    "prediction.py",
    "devices.py",
    "checkpoints.py",
    "fingerprints.py",
    "models",
    "losses.py",
    "metrics.py",
    "data/loading.py",
    "data/clinical.py",
    "data/preprocess.py",
)


# The modules a new patient's prediction runs (``hecktor predict``: finding and reading the patient,
# preprocessing, the predictors, writing the results), package-relative: their digest keys the
# results a rerun reuses. A test holds it to the modules ``hecktor.inference`` imports.
INFERENCE_CODE = (
    "__init__.py",
    "inference",
    "tasks/__init__.py",
    "tasks/spec.py",
    "networks.py",
    "models",
    "prediction.py",
    "lesions.py",
    "labels.py",
    "planning.py",
    "bundle.py",
    "checkpoints.py",
    "devices.py",
    "config.py",
    "data/clinical.py",
    "data/folds.py",
    "data/layout.py",
    "data/preprocess.py",
    "io.py",
    "locks.py",
    "errors.py",
    "fingerprints.py",
    "tracking.py",
)


def file_sha256(path: Path | str) -> str:
    """Hex SHA-256 of a file's bytes, read in blocks (images and weights can be large)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def files_digest(paths: Iterable[Path | str], length: int = 16) -> str:
    """Digest of several files' bytes, in the order given."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(file_sha256(path).encode())
    return digest.hexdigest()[:length]


def json_digest(data: Any, length: int = 16) -> str:
    """Digest of a JSON-able value, independent of key order."""
    blob = json.dumps(data, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def source_digest(root: Path | str, parts: Iterable[str]) -> str:
    """Digest of the ``.py`` files at ``parts`` (files or folders) under ``root``, names included."""
    root = Path(root)
    files: set[Path] = set()
    for part in parts:
        path = root / part
        files |= set(path.rglob("*.py")) if path.is_dir() else {path}
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def training_code(extra: tuple[str, ...] = ()) -> str:
    """Digest of the training code (plus ``extra`` package modules)."""
    return source_digest(PACKAGE, TRAINING_CODE + extra)


def inference_code() -> str:
    """Digest of the code that computes a new patient's prediction."""
    return source_digest(PACKAGE, INFERENCE_CODE)


def prepared_digest(prepared: Path | str) -> str:
    """Digest of every prepared case's metadata: changes whenever the prepared data do."""
    digest = hashlib.sha256()
    for meta in sorted(Path(prepared).glob("*/meta.json")):
        digest.update(meta.parent.name.encode())
        digest.update(meta.read_bytes())
    return digest.hexdigest()[:12]
