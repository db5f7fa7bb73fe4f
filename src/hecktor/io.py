"""Safe file output: atomic writes, strict JSON, and folders that are ours to replace.

Every file is written to a temporary sibling and renamed into place, so a killed or failed stage
never leaves a half-written file or folder where a later stage, or DVC, would take it for a finished
one. A folder is replaced only when it is empty, absent, or marked (:data:`MARKER`) as the earlier
output of the same command: no command deletes or overwrites what it did not create.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import secrets
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import SimpleITK as sitk

from hecktor.errors import UserError

log = logging.getLogger(__name__)

MARKER = ".hecktor-output"  # names the command whose output a folder is


class OutputError(UserError):
    """An output path that must not be written: it holds what this tool did not create, or it
    overlaps an input."""


def _unique_sibling(path: Path, suffix: str, make: Callable[[Path], None]) -> Path:
    """Create a new temporary entry beside ``path`` with ``make``, under a name no one else has.

    Unlike :mod:`tempfile`'s (mode 0600 and 0700), the entry gets the permissions of any file the
    user creates (0666 or 0777 less the umask): an output is as readable as a plain copy would be.
    """
    for _ in range(100):
        candidate = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp{suffix}")
        try:
            make(candidate)
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(f"{path}: no free temporary name beside it")


def _temp_sibling(path: Path) -> Path:
    """A unique temporary file beside ``path`` that keeps its extension (image writers need it)."""

    def create(name: Path) -> None:
        os.close(os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))

    return _unique_sibling(path, "".join(path.suffixes), create)


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


def _finite(value: Any, where: str, found: list[str]) -> Any:
    """``value`` with every non-finite float replaced by None; ``found`` collects where."""
    if isinstance(value, float) and not math.isfinite(value):
        found.append(where or "(top level)")
        return None
    if isinstance(value, dict):
        return {k: _finite(v, f"{where}.{k}" if where else str(k), found) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v, f"{where}[{i}]", found) for i, v in enumerate(value)]
    return value


def figure(value: Any) -> float:
    """A number read back from our JSON: null (an undefined figure, see :func:`write_json`) is NaN."""
    return float("nan") if value is None else float(value)


def strict(data: Any, where: Path | str) -> Any:
    """``data`` fit for strict JSON: NaN and infinities become None, with one warning naming them."""
    found: list[str] = []
    clean = _finite(data, "", found)
    if found:
        shown = ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
        log.warning("%s: %s undefined (NaN or infinite), written as null", where, shown)
    return clean


def write_json(path: Path | str, data: Any) -> None:
    """Write strict JSON (RFC 8259): NaN and infinities become null, with a warning naming them."""
    text = json.dumps(strict(data, path), indent=2, sort_keys=False, allow_nan=False)
    write_text(path, text + "\n")


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


def _overlaps(out: Path, inputs: Iterable[Path | str | None]) -> str | None:
    """How ``out`` overlaps one of ``inputs`` (equal to, inside, or containing it), or None."""
    out = out.resolve()
    for given in inputs:
        if given is None:
            continue
        other = Path(given).resolve()
        if out == other:
            return f"is the input {given}"
        if out.is_relative_to(other):
            return f"lies inside the input {given}"
        if other.is_relative_to(out):
            return f"contains the input {given}"
    return None


def check_output_file(path: Path | str, inputs: Iterable[Path | str | None] = ()) -> Path:
    """Refuse an output file that is a folder or overlaps an input; return it as a Path."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a folder; give the path of a file to write")
    overlap = _overlaps(path, inputs)
    if overlap:
        raise OutputError(f"{path}: output {overlap}; write it elsewhere")
    return path


def claim_json(path: Path | str, command: str, inputs: Iterable[Path | str | None] = ()) -> Path:
    """Check that JSON file ``path`` may receive ``command``'s output: it is absent, or an earlier
    output of that command (its ``written_by`` names it), and no input overlaps it."""
    path = check_output_file(path, inputs)
    if path.exists():
        try:
            owner = json.loads(path.read_text()).get("written_by")
        except (OSError, ValueError, AttributeError):
            owner = None
        if owner != f"hecktor {command}":
            raise OutputError(
                f"{path}: exists and was not written by `hecktor {command}`; "
                "choose another output file"
            )
    return path


def claim_dir(path: Path | str, command: str, inputs: Iterable[Path | str | None] = ()) -> Path:
    """Check that folder ``path`` may receive ``command``'s output, before any work is done.

    It may when it is absent, empty, or marked as the earlier output of the same command. A file,
    a folder with anything else in it, or a path equal to, inside or containing one of ``inputs``
    is refused with :class:`OutputError` naming the path.
    """
    path = Path(path)
    overlap = _overlaps(path, inputs)
    if overlap:
        raise OutputError(f"{path}: output {overlap}; choose another output folder")
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path}: is a file, not a folder; choose another output folder")
    if path.is_dir() and any(path.iterdir()):
        owner = _owner(path)
        if owner is None:
            first = sorted(p.name for p in path.iterdir())[0]
            raise OutputError(
                f"{path}: not empty and not written by hecktor (it holds {first!r}, among "
                "others); choose an empty or new output folder"
            )
        if owner != command:
            raise OutputError(
                f"{path}: holds the output of `hecktor {owner}`, not of `hecktor {command}`; "
                "choose another output folder"
            )
    return path


def _owner(path: Path) -> str | None:
    """The command named by the folder's marker, or None when it has none."""
    try:
        data = json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data.get("command") if isinstance(data, dict) else None


def mark_dir(path: Path | str, command: str) -> None:
    """Mark ``path`` as ``command``'s output. The content is fixed, so DVC sees equal folders."""
    write_text(Path(path) / MARKER, json.dumps({"written_by": "hecktor", "command": command}))


@contextlib.contextmanager
def atomic_dir(
    path: Path | str, command: str, inputs: Iterable[Path | str | None] = ()
) -> Iterator[Path]:
    """Build a folder under a temporary name and move it to ``path`` only when complete.

    ``path`` is first claimed for ``command`` (:func:`claim_dir`): a folder that holds anything
    this command did not write is refused before any work. An earlier output of the same command
    is replaced; on failure the partial folder is deleted and ``path`` is left as it was.
    """
    path = claim_dir(path, command, inputs)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _unique_sibling(path, "", lambda name: name.mkdir(0o777))
    try:
        yield tmp
        mark_dir(tmp, command)
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
