"""Atomic file output: every file is written to a temporary sibling and renamed into place.

A killed or failed stage therefore never leaves a half-written file or folder where a later stage,
or DVC, would take it for a finished one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import SimpleITK as sitk


def _temp_sibling(path: Path) -> Path:
    """A unique temporary name beside ``path`` that keeps its extension (image writers need it)."""
    suffix = "".join(path.suffixes)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    return Path(name)


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path``, on failure it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: Path | str, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: Path | str, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_image(path: Path | str, image: sitk.Image, compress: bool = True) -> None:
    """Write a NIfTI or MetaImage file atomically (format from the extension).

    Only pixels and geometry are written: header fields carried over from another format (NIfTI
    descriptions, qform codes) would make ITK warn about every MetaImage it writes.
    """
    clean = sitk.Image(image)
    for key in clean.GetMetaDataKeys():
        clean.EraseMetaData(key)
    with atomic_path(path) as tmp:
        sitk.WriteImage(clean, str(tmp), useCompression=compress)


@contextlib.contextmanager
def atomic_dir(path: Path | str) -> Iterator[Path]:
    """Build a folder under a temporary name and move it to ``path`` only when complete.

    An existing ``path`` is replaced; on failure the partial folder is deleted and ``path`` is
    left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
