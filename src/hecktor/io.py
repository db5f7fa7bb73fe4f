"""Safe file output: atomic, verified writes, strict JSON, and folders that are ours to replace.

Every file is written to a temporary sibling, checked (its size; an image reads back to the
voxels written), and only then renamed into place, so a killed or failed stage, or a full disk,
never leaves a half-written file or folder where a later stage, or DVC, would take it for a
finished one. A folder is replaced only when it is empty, absent, or marked (:data:`MARKER`) as
the earlier output of the same command, and only by the one process holding its lock
(:mod:`hecktor.locks`): no command deletes or overwrites what it did not create. Temporaries
left by a killed writer are removed by the next writer of the same output.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import re
import secrets
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from hecktor import locks
from hecktor.errors import UserError

log = logging.getLogger(__name__)

MARKER = ".hecktor-output"  # names the command whose output a folder is
INCOMPLETE = ".hecktor-incomplete"  # in a folder written in place while its writer works on it


class OutputError(UserError):
    """An output path that must not be written: it holds what this tool did not create, or it
    overlaps an input."""


class WriteError(UserError):
    """An output that could not be written whole: a full disk, or a file that does not read back
    as written. Nothing was published under its name."""


FREE_MIN = 1 << 20  # bytes: a write that fails with less free than this failed for want of space


def _mount(path: Path) -> Path:
    path = path.resolve()
    while not path.exists() or (not os.path.ismount(path) and path != path.parent):
        path = path.parent
    return path


def _out_of_space(path: Path, err: BaseException | None) -> str | None:
    """Why a write to ``path`` failed, when the disk is full (a message), else None.

    Writers do not all say so: ``OSError(ENOSPC)`` from Python, a short file and no error from
    ITK's gzip writer, "Error while creating the NDArray" from Blosc2, "unexpected pos" from torch.
    So the disk itself is asked as well."""
    while err is not None:
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            break
        err = err.__cause__ or err.__context__
    mount = _mount(path.parent)
    try:
        stats = os.statvfs(mount)
    except OSError:
        return None
    free = stats.f_bavail * stats.f_frsize
    if err is None and free >= FREE_MIN:
        return None
    return (f"{path}: no space left on the disk ({mount}: {free} bytes free); free some space, "
            "then run again")  # fmt: skip


def _name_tag() -> str:
    """What a temporary's name says of its writer: this machine and process (a sweep of
    temporaries removes only those whose writer is gone)."""
    return f"{locks.host_id()}-{os.getpid()}-{secrets.token_hex(4)}"


def _unique_sibling(path: Path, suffix: str, make: Callable[[Path], None]) -> Path:
    """Create a new temporary entry beside ``path`` with ``make``, under a name no one else has.

    Unlike :mod:`tempfile`'s (mode 0600 and 0700), the entry gets the permissions of any file the
    user creates (0666 or 0777 less the umask): an output is as readable as a plain copy would be.
    """
    for _ in range(100):
        candidate = path.with_name(f".{path.name}.{_name_tag()}.tmp{suffix}")
        try:
            make(candidate)
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(f"{path}: no free temporary name beside it")


def _old(path: Path) -> Path:
    """Where :func:`atomic_dir` keeps the previous output during its two renames."""
    return path.with_name(f".{path.name}.old")


# a temporary of output <name>: ".<name>.<host>-<pid>-<random>.tmp<suffix>" (earlier: no host, pid)
_TEMP = re.compile(r"^\.(?P<output>.+)\.(?:(?P<host>\w+)-(?P<pid>\d+)-)?[0-9a-f]{8}\.tmp")


def _remove(entry: Path) -> None:
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry, ignore_errors=True)
    else:
        entry.unlink(missing_ok=True)


def sweep(path: Path | str, every: bool = False) -> list[Path]:
    """Remove what killed writers of ``path`` left beside it: its temporaries whose process is
    gone (``every``: all of them, for the holder of its lock, which no live writer can share).

    A folder's previous output, set aside by :func:`atomic_dir` when the writer was killed
    between its two renames, is put back first. Returns what was removed."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    old = _old(path)
    if old.is_dir() and not path.exists():
        os.replace(old, path)
    removed = []
    for entry in path.parent.iterdir():
        match = _TEMP.match(entry.name)
        if match is not None and match["output"] == path.name:
            if every or locks.gone(match["host"], match["pid"]):
                removed.append(entry)
        elif every and entry == old:
            removed.append(entry)
    for entry in removed:
        _remove(entry)
    if removed:
        log.info("%s: removed %d leftover(s) of an earlier writer: %s", path, len(removed),
                 ", ".join(p.name for p in removed))  # fmt: skip
    return removed


def scratch(prefix: str) -> Path:
    """A new private folder in the system's temporary folder for this process's scratch work
    (models fetched from the registry, bundles being registered), named by machine and process;
    first, the scratch folders of ``prefix`` whose process is gone (killed before it could clean
    up) are removed."""
    root = Path(tempfile.gettempdir())
    for entry in root.glob(f"{prefix}*"):
        match = re.match(rf"{re.escape(prefix)}(\w+)-(\d+)-", entry.name)
        if match and locks.gone(match[1], match[2]):
            shutil.rmtree(entry, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{prefix}{locks.host_id()}-{os.getpid()}-"))


@contextlib.contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    """:func:`scratch`, removed when the block ends."""
    path = scratch(prefix)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _temp_sibling(path: Path) -> Path:
    """A unique temporary file beside ``path`` that keeps its extension (image writers need it)."""

    def create(name: Path) -> None:
        os.close(os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))

    return _unique_sibling(path, "".join(path.suffixes), create)


@contextlib.contextmanager
def _said_when_full(path: Path) -> Iterator[None]:
    """Any failure of the block, on a full disk, as a :class:`WriteError` that says so."""
    try:
        yield
    except Exception as err:
        full = _out_of_space(path, err)
        if full:
            raise WriteError(full) from err
        raise


@contextlib.contextmanager
def atomic_path(path: Path | str, check: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """Yield a temporary path to write; on success it is checked (by ``check``, which raises on a
    file that is not what was written; without one, it must not be empty) and replaces ``path``;
    on failure it is removed. A failure on a full disk is a :class:`WriteError` that says so."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep(path)
    tmp = _temp_sibling(path)
    try:
        with _said_when_full(path):
            yield tmp
            try:
                if check is not None:
                    check(tmp)
                elif tmp.stat().st_size == 0:
                    raise ValueError("an empty file")
            except Exception as err:
                raise WriteError(
                    f"{path}: the written file is not what was written ({err})"
                ) from err
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _has_size(size: int) -> Callable[[Path], None]:
    def check(tmp: Path) -> None:
        if tmp.stat().st_size != size:
            raise ValueError(f"{tmp.stat().st_size} of {size} bytes on disk")

    return check


def write_text(path: Path | str, text: str) -> None:
    data = text.encode()
    with atomic_path(path, _has_size(len(data))) as tmp:
        tmp.write_bytes(data)


def check_zip(tmp: Path) -> None:
    """A zip archive (``torch.save``'s format, ``.npz``) complete to its last byte."""
    with zipfile.ZipFile(tmp) as archive:
        bad = archive.testzip()
    if bad is not None:
        raise ValueError(f"entry {bad} damaged")


def read_json(path: Path | str, max_bytes: int = 1 << 20) -> Any:
    """JSON from a file given to us (a container's ``ehr.json``, a bundle's manifest): at most
    ``max_bytes`` and nested at most a few hundred deep, else ``ValueError`` saying which."""
    path = Path(path)
    size = path.stat().st_size
    if size > max_bytes:
        raise ValueError(f"{size} bytes, more than the {max_bytes} a JSON file here may hold")
    try:
        return json.loads(path.read_text())
    except RecursionError:
        raise ValueError("nested too deeply") from None


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


def _voxels(path: Path) -> np.ndarray:
    """The voxels of an image file as (Z, Y, X), read strictly: ITK zero-fills a truncated NIfTI
    without a word, nibabel refuses it."""
    if path.name.endswith((".nii", ".nii.gz")):
        return np.asanyarray(nib.load(str(path)).dataobj).T
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def write_image(path: Path | str, image: sitk.Image, compress: bool = True) -> None:
    """Write a NIfTI or MetaImage file atomically (format from the extension), published only
    once it reads back to the voxels written (ITK's gzip writer returns normally on a full disk,
    leaving a short file).

    Only pixels and geometry are written: header fields carried over from another format (NIfTI
    descriptions, qform codes) would make ITK warn about every MetaImage it writes.
    """
    clean = sitk.Image(image)
    for key in clean.GetMetaDataKeys():
        clean.EraseMetaData(key)

    def check(tmp: Path) -> None:
        if not np.array_equal(_voxels(tmp), sitk.GetArrayViewFromImage(clean)):
            raise ValueError("the voxels read back differ from those written")

    with atomic_path(path, check) as tmp:
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
        written_by = owner(path)
        if written_by is None:
            first = sorted(p.name for p in path.iterdir())[0]
            raise OutputError(
                f"{path}: not empty and not written by hecktor (it holds {first!r}, among "
                "others); choose an empty or new output folder"
            )
        if written_by != command:
            raise OutputError(
                f"{path}: holds the output of {locks.who(written_by)}, not of {locks.who(command)}; "
                "choose another output folder"
            )
    return path


def claim_files(root: Path | str, names: Iterable[Path | str], command: str) -> None:
    """Check that the files ``names`` under ``root`` may receive ``command``'s output (a folder
    shared with others, such as a container's ``/output``): each is absent, or ``root`` is marked
    as ``command``'s earlier output."""
    root = Path(root)
    taken = [root / name for name in names if (root / name).exists()]
    if taken and owner(root) != command:
        raise OutputError(f"{taken[0]}: exists and was not written by {locks.who(command)}; "
                          "give an empty output folder")  # fmt: skip


def owner(path: Path) -> str | None:
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
def owned_dir(
    path: Path | str, command: str, inputs: Iterable[Path | str | None] = ()
) -> Iterator[Path]:
    """Hold folder ``path`` for ``command``, which writes it in place, file by file (``predict``):
    its lock (:func:`hecktor.locks.writing`) for as long as the block runs, the claim
    (:func:`claim_dir`, refused before any work) and the marker. What a killed writer left in it
    or beside it is removed."""
    path = Path(path)
    with locks.writing(path, command):
        sweep(path, every=True)
        path = claim_dir(path, command, inputs)
        path.mkdir(parents=True, exist_ok=True)
        mark_dir(path, command)
        write_text(path / INCOMPLETE, json.dumps({"command": command, "pid": os.getpid()}))
        leftovers = [entry for entry in path.rglob(".*") if _TEMP.match(entry.name)]
        for entry in leftovers:
            _remove(entry)
        if leftovers:
            log.info("%s: removed %d leftover(s) of an earlier writer", path, len(leftovers))
        yield path
        (path / INCOMPLETE).unlink()  # only when the writer ends without an error


def check_complete(path: Path | str) -> None:
    """Refuse a result (a folder, or a file in one) whose writer did not finish it: it was
    killed, or failed, while writing the folder in place (:func:`owned_dir`)."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    if (folder / INCOMPLETE).is_file():
        raise OutputError(
            f"{folder}: incomplete: {locks.who(owner(folder) or '?')} stopped before the end "
            "while writing it; run it again to complete it"
        )


@contextlib.contextmanager
def atomic_dir(
    path: Path | str, command: str, inputs: Iterable[Path | str | None] = ()
) -> Iterator[Path]:
    """Build a folder under a temporary name and move it to ``path`` only when complete.

    ``command`` holds the folder's lock throughout (:func:`hecktor.locks.writing`: a second
    writer stops, naming it) and first claims it (:func:`claim_dir`): a folder that holds
    anything this command did not write is refused before any work. What a killed writer left
    beside it is removed. An earlier output of the same command is replaced; on failure the
    partial folder is deleted and ``path`` is left as it was.
    """
    path = Path(path)
    with locks.writing(path, command):
        sweep(path, every=True)
        path = claim_dir(path, command, inputs)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _unique_sibling(path, "", lambda name: name.mkdir(0o777))
        try:
            with _said_when_full(path):
                yield tmp
            mark_dir(tmp, command)
            if path.exists():
                old = _old(path)
                os.replace(path, old)
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
