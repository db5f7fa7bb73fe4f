"""HECKTOR 2025 release layout, its clinical tables, validation, and the challenge container I/O.

A training release looks like::

    <root>/Task 1/<PID>/<PID>__CT.nii.gz  <PID>__PT.nii.gz  <PID>.nii.gz   (label on the CT grid)
    <root>/Task 1/HECKTOR_2025_Training_Task_1.csv
    <root>/Task 2/<PID>/<PID>__CT.nii.gz  <PID>__PT.nii.gz
    <root>/Task 2/HECKTOR_2025_Training_Task_2.csv
    <root>/Task 3/<PID>/<PID>__CT.nii.gz  <PID>__PT.nii.gz
    <root>/Task 3/HECKTOR_2025_Training_Task_3.csv

Every check reports a :class:`Problem` that names the patient and the file; validation collects all
of them instead of stopping at the first. Images are read with SimpleITK, which keeps the physical
geometry (origin, spacing, direction, LPS) that masks must be written back onto.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import SimpleITK as sitk
from tqdm import tqdm

from hecktor import io
from hecktor.errors import UserError

TASKS = (1, 2, 3)
TASK_DIR = {1: "Task 1", 2: "Task 2", 3: "Task 3"}
TASK_CSV = {t: f"HECKTOR_2025_Training_Task_{t}.csv" for t in TASKS}
LABELS = (0, 1, 2)  # background, GTVp, GTVn

CLINICAL = ("Age", "Gender", "Tobacco Consumption", "Alcohol Consumption", "Performance Status")
TASK_COLUMNS: dict[int, tuple[str, ...]] = {
    1: ("PatientID",),
    2: ("PatientID", *CLINICAL, "M-stage", "Treatment", "RFS", "Relapse"),
    3: ("PatientID", "HPV Status", *CLINICAL, "M-stage"),
}

_ID = re.compile(r"^(?P<centre>[A-Za-z]+)[-_]?\w*$")
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # the whole ID: fullmatch
_GEOMETRY_TOL_MM = 1e-3
MIN_OVERLAP = 0.8  # along every axis, the shared share of the shorter CT or PET field of view


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the input, located by patient and file."""

    patient: str
    file: Path
    message: str

    def __str__(self) -> str:
        return f"{self.patient}: {self.file}: {self.message}"


class InputError(UserError):
    """Input that cannot be used; carries every problem found."""

    def __init__(self, problems: Sequence[Problem]):
        self.problems = list(problems)
        head = f"{len(self.problems)} problem(s) in the input:"
        super().__init__("\n  ".join([head, *map(str, self.problems)]))


@dataclass(frozen=True)
class CaseFiles:
    """The image files of one patient in one task folder."""

    patient: str
    task: int
    ct: Path
    pet: Path
    label: Path | None = None


@dataclass
class Release:
    """A scanned release: cases per task, table paths, and problems found while scanning."""

    root: Path
    cases: dict[int, list[CaseFiles]] = field(default_factory=dict)
    tables: dict[int, Path] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    def patients(self) -> list[str]:
        """All patient IDs with images, in sorted order."""
        return sorted({c.patient for cases in self.cases.values() for c in cases})

    def image_case(self, patient: str) -> CaseFiles:
        """The case whose images represent ``patient``: Task 1 (with label) first."""
        for task in TASKS:
            for case in self.cases.get(task, []):
                if case.patient == patient:
                    return case
        raise KeyError(patient)


def id_problem(patient: str) -> str | None:
    """Why ``patient`` cannot be a patient ID, or None. IDs name files and folders, so they are
    letters, digits, ``-``, ``_`` and ``.``, start with a letter or digit, and hold no ``..``."""
    if _SAFE_ID.fullmatch(patient) and ".." not in patient:
        return None
    return (
        f"{patient!r} is not a valid patient ID (letters, digits, '-', '_' and '.', starting "
        "with a letter or digit, at most 64 characters)"
    )


def is_hidden(name: str) -> bool:
    """Folders such as ``.git`` or ``.ipynb_checkpoints``: never patients, in any input layout."""
    return name.startswith(".")


def centre_of(patient: str) -> str:
    """Centre code from a patient ID such as ``CHUM-001``."""
    match = _ID.match(patient)
    return match.group("centre").upper() if match else "UNKNOWN"


def case_paths(root: Path, task: int, patient: str) -> CaseFiles:
    """Where the files of ``patient`` live in ``task`` of a release rooted at ``root``."""
    folder = Path(root) / TASK_DIR[task] / patient
    label = folder / f"{patient}.nii.gz" if task == 1 else None
    return CaseFiles(
        patient, task, folder / f"{patient}__CT.nii.gz", folder / f"{patient}__PT.nii.gz", label
    )


def scan_release(root: Path | str) -> Release:
    """List the cases and tables of a release; missing files become problems, not exceptions."""
    root = Path(root)
    release = Release(root=root)
    if not root.is_dir():
        release.problems.append(Problem("-", root, "release folder not found"))
        return release
    for task in TASKS:
        task_dir = root / TASK_DIR[task]
        if not task_dir.is_dir():
            release.problems.append(Problem("-", task_dir, "task folder missing"))
            continue
        table = task_dir / TASK_CSV[task]
        if table.is_file():
            release.tables[task] = table
        else:
            release.problems.append(Problem("-", table, "clinical table missing"))
        cases = []
        for folder in sorted(p for p in task_dir.iterdir() if p.is_dir()):
            if is_hidden(folder.name):
                continue
            bad_id = id_problem(folder.name)
            if bad_id:
                release.problems.append(Problem(folder.name, folder, bad_id))
                continue
            case = case_paths(root, task, folder.name)
            missing = [
                p for p in (case.ct, case.pet, case.label) if p is not None and not p.is_file()
            ]
            for path in missing:
                what = {case.ct: "CT", case.pet: "PET", case.label: "label"}[path]
                release.problems.append(Problem(case.patient, path, f"{what} file missing"))
            if not missing:
                cases.append(case)
        release.cases[task] = cases
    return release


# --------------------------------------------------------------------------- images


_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


@dataclass(frozen=True)
class ImageLimits:
    """What an image's header may claim, checked before any voxel is read: a 96-byte ``.nii.gz``
    can claim two billion voxels, and a 2 MB one can hold 2 GB. The defaults admit any CT or PET
    of a head-and-neck study (HECKTOR CTs are about 512 x 512 x 300 voxels); the environment
    variables ``HECKTOR_MAX_VOXELS``, ``HECKTOR_MAX_SIDE`` and ``HECKTOR_SPACING_MM``
    (``low,high``) change them."""

    max_voxels: int = 2**28  # 512 x 512 x 1024; 1 GiB as float32
    max_side: int = 8192
    spacing_mm: tuple[float, float] = (0.01, 50.0)

    @classmethod
    def from_env(cls) -> ImageLimits:
        env = os.environ
        try:
            low, high = (float(v) for v in env.get("HECKTOR_SPACING_MM", "0.01,50").split(","))
            return cls(int(env.get("HECKTOR_MAX_VOXELS", cls.max_voxels)),
                       int(env.get("HECKTOR_MAX_SIDE", cls.max_side)), (low, high))  # fmt: skip
        except ValueError as err:
            raise UserError(
                f"HECKTOR_MAX_VOXELS, HECKTOR_MAX_SIDE, HECKTOR_SPACING_MM: {err}"
            ) from None

    def problem(
        self, size: Sequence[int], spacing: Sequence[float], components: int = 1
    ) -> str | None:
        """Why a header claiming ``size`` voxels of ``spacing`` mm is refused, or None."""
        size = [int(v) for v in size]
        if len(size) != 3:
            return f"expected a 3D image, got shape {tuple(size)}"
        voxels = math.prod(size) * components
        if min(size) < 1 or max(size) > self.max_side:
            return (f"implausible size {tuple(size)} in the header (each side 1 to "
                    f"{self.max_side} voxels; HECKTOR_MAX_SIDE)")  # fmt: skip
        if voxels > self.max_voxels:
            return (f"the header claims {tuple(size)} = {voxels} voxels, more than the "
                    f"{self.max_voxels} allowed (HECKTOR_MAX_VOXELS)")  # fmt: skip
        low, high = self.spacing_mm
        if not all(low <= float(v) <= high for v in spacing):
            return (f"implausible voxel spacing {tuple(round(float(v), 6) for v in spacing)} mm "
                    f"in the header ({low} to {high} mm; HECKTOR_SPACING_MM)")  # fmt: skip
        return None


def read_nifti(path: Path | str) -> sitk.Image:
    """Read NIfTI with nibabel, strictly, into a SimpleITK image with LPS geometry.

    ITK's NIfTI reader zero-fills a truncated file without complaint; nibabel raises. The header
    is checked against :class:`ImageLimits` before the voxels are read. The affine (RAS) becomes
    ITK's origin, spacing and direction (LPS), as ITK itself would set them.
    """
    image = nib.load(str(path))
    refused = ImageLimits.from_env().problem(image.shape, image.header.get_zooms())
    if refused:
        raise ValueError(refused)
    data = np.asanyarray(image.dataobj)
    affine = _RAS_TO_LPS @ image.affine[:3, :4]
    spacing = np.linalg.norm(affine[:, :3], axis=0)
    if np.any(spacing <= 0):
        raise ValueError(f"degenerate voxel spacing {spacing.tolist()}")
    out = sitk.GetImageFromArray(np.ascontiguousarray(data.T))
    out.SetSpacing(tuple(float(v) for v in spacing))
    out.SetOrigin(tuple(float(v) for v in affine[:, 3]))
    out.SetDirection(tuple(float(v) for v in (affine[:, :3] / spacing).ravel()))
    return out


def read_image(path: Path, patient: str, problems: list[Problem], pixel=sitk.sitkFloat32):
    """Read a 3D image (NIfTI or anything ITK reads), or record why it cannot and return None."""
    try:
        if str(path).endswith((".nii", ".nii.gz")):
            image = read_nifti(path)
        else:
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            reader.ReadImageInformation()  # the header alone, checked before the voxels
            refused = ImageLimits.from_env().problem(
                reader.GetSize(), reader.GetSpacing(), reader.GetNumberOfComponents()
            )
            if refused:
                problems.append(Problem(patient, path, refused))
                return None
            image = reader.Execute()
        if pixel is not None:
            image = sitk.Cast(image, pixel)
    except Exception as err:  # any reader failure is the file's problem, not ours
        reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        problems.append(Problem(patient, path, f"cannot read image ({reason[:200]})"))
        return None
    if image.GetDimension() != 3:
        problems.append(Problem(patient, path, f"expected a 3D image, got {image.GetDimension()}D"))
        return None
    return image


def physical_bounds(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned physical box (mm, LPS) spanned by the voxel centres of ``image``."""
    size = np.array(image.GetSize()) - 1
    corners = [
        image.TransformContinuousIndexToPhysicalPoint([float(c) for c in np.array(idx) * size])
        for idx in np.ndindex(2, 2, 2)
    ]
    pts = np.array(corners)
    return pts.min(axis=0), pts.max(axis=0)


def overlap_box(a: sitk.Image, b: sitk.Image) -> tuple[np.ndarray, np.ndarray] | None:
    """Physical intersection of two images' extents, or None when they do not overlap."""
    lo_a, hi_a = physical_bounds(a)
    lo_b, hi_b = physical_bounds(b)
    lo, hi = np.maximum(lo_a, lo_b), np.minimum(hi_a, hi_b)
    return (lo, hi) if np.all(hi > lo) else None


def overlap_fraction(a: sitk.Image, b: sitk.Image) -> float:
    """How far two fields of view overlap (0 to 1): along each axis, the shared extent as a share
    of the shorter of the two, and the least of the three.

    A head-and-neck CT inside a whole-body PET scores 1; a PET that shares 7 mm of a 300 mm CT
    scores about 0.02. Per axis, so that a wide short PET beside a narrow long CT is not
    penalised for the parts that neither needs.
    """
    (lo_a, hi_a), (lo_b, hi_b) = physical_bounds(a), physical_bounds(b)
    shared = np.minimum(hi_a, hi_b) - np.maximum(lo_a, lo_b)
    shorter = np.minimum(hi_a - lo_a, hi_b - lo_b)
    if np.any(shared < 0):
        return 0.0
    share = np.where(shorter > 0, shared / np.where(shorter > 0, shorter, 1.0), 1.0)
    return float(min(share.min(), 1.0))


def grid_differences(a: sitk.Image, b: sitk.Image, tol_mm: float = _GEOMETRY_TOL_MM) -> list[str]:
    """What differs between two grids, as ``"origin (..) vs (..)"``; empty when they are one."""

    def show(values) -> str:
        return "(" + ", ".join(f"{v:g}" for v in np.round(values, 4)) + ")"

    out = []
    if a.GetSize() != b.GetSize():
        out.append(f"size {a.GetSize()} vs {b.GetSize()}")
    for name, tol in (("spacing", tol_mm), ("origin", tol_mm), ("direction", 1e-4)):
        va, vb = (getattr(img, f"Get{name.capitalize()}")() for img in (a, b))
        if not np.allclose(va, vb, atol=tol):
            out.append(f"{name} {show(va)} vs {show(vb)}")
    return out


def same_grid(a: sitk.Image, b: sitk.Image, tol_mm: float = _GEOMETRY_TOL_MM) -> bool:
    """Whether two images share size, spacing, origin and direction."""
    return not grid_differences(a, b, tol_mm)


@dataclass
class RawCase:
    """The images of one patient, read and checked."""

    patient: str
    ct: sitk.Image
    pet: sitk.Image
    label: sitk.Image | None


def check_images(
    patient: str,
    ct: sitk.Image | None,
    pet: sitk.Image | None,
    label: sitk.Image | None,
    files: tuple[Path, Path, Path | None],
    problems: list[Problem],
) -> None:
    """Content checks shared by release and container input: finite values, overlap, label grid."""
    ct_path, pet_path, label_path = files
    for image, path in ((ct, ct_path), (pet, pet_path)):
        if image is not None and not np.isfinite(sitk.GetArrayViewFromImage(image)).all():
            problems.append(Problem(patient, path, "image contains NaN or infinite values"))
    if ct is not None and pet is not None:
        share = overlap_fraction(ct, pet)
        if share < MIN_OVERLAP:
            lo_c, hi_c = physical_bounds(ct)
            lo_p, hi_p = physical_bounds(pet)
            what = "does not overlap" if share == 0 else f"covers only {100 * share:.0f}% of"
            problems.append(
                Problem(
                    patient,
                    pet_path,
                    f"PET {what} the CT in physical space (at least {100 * MIN_OVERLAP:.0f}% "
                    "of the shorter field of view along each axis needed; "
                    f"CT {np.round(lo_c, 1).tolist()}..{np.round(hi_c, 1).tolist()} mm, "
                    f"PET {np.round(lo_p, 1).tolist()}..{np.round(hi_p, 1).tolist()} mm)",
                )
            )
    if label is not None and label_path is not None:
        differences = grid_differences(label, ct) if ct is not None else []
        if differences:
            problems.append(
                Problem(
                    patient,
                    label_path,
                    "label is not on the CT grid: " + "; ".join(differences) + " (label vs CT)",
                )
            )
        values = np.unique(sitk.GetArrayViewFromImage(label))
        bad = [v for v in values.tolist() if v not in LABELS]
        if bad:
            problems.append(
                Problem(patient, label_path, f"label values {bad[:10]} outside {{0, 1, 2}}")
            )


def read_case(case: CaseFiles) -> RawCase:
    """Read and check one case; raise :class:`InputError` with every problem found."""
    problems: list[Problem] = []
    ct = read_image(case.ct, case.patient, problems)
    pet = read_image(case.pet, case.patient, problems)
    label = None
    if case.label is not None:
        label = read_image(case.label, case.patient, problems, pixel=None)
        if label is not None and label.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
            array = sitk.GetArrayViewFromImage(label)
            if not np.all(np.mod(array, 1) == 0):
                problems.append(Problem(case.patient, case.label, "label has non-integer values"))
    check_images(case.patient, ct, pet, label, (case.ct, case.pet, case.label), problems)
    if problems:
        raise InputError(problems)
    assert ct is not None and pet is not None
    if label is not None:
        label = sitk.Cast(label, sitk.sitkUInt8)
    return RawCase(case.patient, ct, pet, label)


def validate_release(root: Path | str) -> Release:
    """Check every table and every image copy of every task; raise :class:`InputError` listing
    all problems. A patient's Task 2 and 3 copies are read too: a broken copy is a broken release
    even where another copy of the same patient is fine."""
    release = scan_release(root)
    problems = list(release.problems)
    read_tables(release, problems)
    cases = [case for task in TASKS for case in release.cases.get(task, [])]
    for case in tqdm(cases, desc="validate", unit="image set"):
        try:
            read_case(case)
        except InputError as err:
            problems.extend(err.problems)
    if problems:
        raise InputError(problems)
    return release


# --------------------------------------------------------------------------- clinical tables


def _parse(value: object, kind: str) -> float | str | None:
    """Parse one clinical cell; ``None`` for missing, ``ValueError`` for an unreadable value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip()
    if text == "" or text.lower() in {"nan", "na", "n/a", "none", "unknown", "-1"}:
        return None
    lower = text.lower()
    if kind == "gender":
        table = {"m": 1.0, "male": 1.0, "1": 1.0, "1.0": 1.0, "f": 0.0, "female": 0.0, "0": 0.0}
        table["0.0"] = 0.0
        if lower in table:
            return table[lower]
        raise ValueError("expected M/F or 1/0")
    if kind == "binary":
        table = {"1": 1.0, "1.0": 1.0, "yes": 1.0, "true": 1.0, "0": 0.0, "0.0": 0.0, "no": 0.0}
        table["false"] = 0.0
        if lower in table:
            return table[lower]
        raise ValueError("expected 0/1")
    if kind == "mstage":
        norm = lower.replace(" ", "")
        table = {"m0": "M0", "0": "M0", "m1": "M1", "1": "M1", "mx": "Mx", "x": "Mx"}
        if norm in table:
            return table[norm]
        raise ValueError("expected M0, M1 or Mx")
    if kind == "text":
        return text
    number = float(text)  # raises ValueError on text
    if not math.isfinite(number):
        raise ValueError("not a finite number")
    if kind == "nonneg" and number < 0:
        raise ValueError("must not be negative")
    if kind == "age" and not 0 <= number <= 120:
        raise ValueError("implausible age: expected 0 to 120 years")
    if kind == "ecog" and number not in (0, 1, 2, 3, 4):
        raise ValueError("expected an ECOG performance status 0, 1, 2, 3 or 4")
    return number


_KIND = {
    "Age": "age",
    "Gender": "gender",
    "Tobacco Consumption": "binary",
    "Alcohol Consumption": "binary",
    "Performance Status": "ecog",
    "M-stage": "mstage",
    "Treatment": "text",
    "RFS": "nonneg",
    "Relapse": "binary",
    "HPV Status": "binary",
    "CenterID": "text",
}
REQUIRED = {2: ("RFS", "Relapse"), 3: ("HPV Status",)}


def parse_table(
    frame: pd.DataFrame, task: int, path: Path, problems: list[Problem]
) -> pd.DataFrame:
    """Check columns and parse values into canonical codes (Gender 1 = male, 0 = female; NaN = unknown)."""
    missing = [c for c in TASK_COLUMNS[task] if c not in frame.columns]
    if missing:
        problems.append(Problem("(all patients)", path, f"missing column(s) {missing}"))
        if "PatientID" not in frame.columns:
            return pd.DataFrame(columns=list(TASK_COLUMNS[task]))
        # the patients are still known: checks against the image folders stay meaningful
        frame = frame[["PatientID"]]
    rows = []
    for i, row in frame.iterrows():
        patient = str(row["PatientID"]).strip()
        if patient in {"", "nan"}:
            problems.append(Problem(f"(row {i + 2})", path, "empty PatientID"))
            continue
        bad_id = id_problem(patient)
        if bad_id:
            problems.append(Problem(f"(row {i + 2})", path, bad_id))
            continue
        parsed: dict[str, object] = {"PatientID": patient}
        for column in frame.columns:
            if column == "PatientID" or column not in _KIND:
                continue
            try:
                parsed[column] = _parse(row[column], _KIND[column])
            except ValueError as err:
                problems.append(
                    Problem(
                        patient,
                        path,
                        f"column {column!r}: unreadable value {row[column]!r} ({err})",
                    )
                )
                parsed[column] = None
        for column in (c for c in REQUIRED.get(task, ()) if c in frame.columns):
            if parsed.get(column) is None and not any(
                p.patient == patient and column in p.message for p in problems
            ):
                problems.append(Problem(patient, path, f"column {column!r}: value required"))
        rows.append(parsed)
    out = pd.DataFrame(rows)
    duplicated = out["PatientID"][out["PatientID"].duplicated()] if len(out) else []
    for patient in sorted(set(duplicated)):
        problems.append(Problem(patient, path, "patient listed more than once"))
    return out


def read_csv(path: Path, problems: list[Problem]) -> pd.DataFrame | None:
    """A CSV as unparsed strings (empty cells stay empty), or None with the reason appended."""
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        problems.append(Problem("(all patients)", path, f"cannot read CSV ({err})"))
        return None


def read_table(path: Path, task: int, problems: list[Problem]) -> pd.DataFrame:
    """Read one task's CSV as strings and parse it; problems are appended, not raised."""
    frame = read_csv(path, problems)
    if frame is None:
        return pd.DataFrame(columns=list(TASK_COLUMNS[task]))
    return parse_table(frame, task, path, problems)


def read_tables(release: Release, problems: list[Problem]) -> dict[int, pd.DataFrame]:
    """Parse every task table and cross-check its patients against the image folders."""
    tables = {}
    for task, path in release.tables.items():
        table = read_table(path, task, problems)
        folders = {c.patient for c in release.cases.get(task, [])}
        listed = set(table["PatientID"]) if len(table) else set()
        for patient in sorted(listed - folders):
            if not any(p.patient == patient for p in release.problems):
                problems.append(
                    Problem(
                        patient, path, f"listed in the table but no folder in {TASK_DIR[task]!r}"
                    )
                )
        for patient in sorted(folders - listed):
            problems.append(
                Problem(patient, path, "has an image folder but is not listed in the table")
            )
        tables[task] = table
    return tables


def clinical_frame(tables: dict[int, pd.DataFrame]) -> pd.DataFrame:
    """One row per patient with every clinical column of Tasks 2 and 3 and a ``CenterID``.

    Where a patient appears in both tables, Task 2 values win and Task 3 fills the gaps.
    """
    frames = [tables[t].set_index("PatientID") for t in (2, 3, 1) if t in tables and len(tables[t])]
    if not frames:
        return pd.DataFrame(columns=["PatientID", "CenterID"])
    merged = frames[0]
    for frame in frames[1:]:
        merged = merged.combine_first(frame)
    merged = merged.reset_index()
    if "CenterID" not in merged:
        merged["CenterID"] = None
    merged["CenterID"] = [
        c if isinstance(c, str) and c else centre_of(p)
        for p, c in zip(merged["PatientID"], merged["CenterID"], strict=True)
    ]
    return merged.sort_values("PatientID").reset_index(drop=True)


# --------------------------------------------------------------------------- container


@dataclass
class ContainerInput:
    """One patient as the challenge container receives it."""

    patient: str
    ct: sitk.Image
    pet: sitk.Image
    ehr: dict[str, object]
    ct_path: Path
    pet_path: Path


CONTAINER_MASK = Path("images/tumor-lymph-node-segmentation/output.mha")
CONTAINER_RFS = Path("rfs.json")
CONTAINER_HPV = Path("hpv-status.json")
CONTAINER_OUTPUTS = (CONTAINER_MASK, CONTAINER_RFS, CONTAINER_HPV)
CONTAINER = "predict --container"  # the writer named in the container's output folder


def _single_mha(folder: Path, what: str, problems: list[Problem]) -> Path | None:
    files = sorted(folder.glob("*.mha")) if folder.is_dir() else []
    if len(files) != 1:
        problems.append(
            Problem("-", folder, f"expected exactly one {what} .mha file, found {len(files)}")
        )
        return None
    return files[0]


def read_container_input(root: Path | str = "/input") -> ContainerInput:
    """Read ``images/ct/*.mha``, ``images/pet/*.mha`` and ``ehr.json`` under ``root``."""
    root = Path(root)
    problems: list[Problem] = []
    ct_path = _single_mha(root / "images" / "ct", "CT", problems)
    pet_path = _single_mha(root / "images" / "pet", "PET", problems)
    patient = ct_path.name.removesuffix(".mha") if ct_path else "-"
    ehr: dict[str, object] = {}
    ehr_path = root / "ehr.json"
    if ehr_path.is_file():
        try:
            loaded = io.read_json(ehr_path)
        except (OSError, ValueError) as err:
            problems.append(Problem(patient, ehr_path, f"cannot read JSON ({err})"))
        else:
            if isinstance(loaded, dict):
                ehr = loaded
            else:
                problems.append(Problem(patient, ehr_path, "expected a JSON object"))
    ct = read_image(ct_path, patient, problems) if ct_path else None
    pet = read_image(pet_path, patient, problems) if pet_path else None
    if ct_path and pet_path:
        check_images(patient, ct, pet, None, (ct_path, pet_path, None), problems)
    if problems:
        raise InputError(problems)
    assert ct is not None and pet is not None and ct_path and pet_path
    return ContainerInput(patient, ct, pet, ehr, ct_path, pet_path)


def write_container_outputs(
    root: Path | str = "/output",
    mask: sitk.Image | None = None,
    rfs: float | None = None,
    hpv: bool | None = None,
) -> list[Path]:
    """Write the official outputs that are given: the uint8 mask, a bare float, a bare boolean.
    None may replace a file that the container did not write (:func:`hecktor.io.claim_files`)."""
    root = Path(root)
    io.claim_files(root, CONTAINER_OUTPUTS, CONTAINER)
    written = []
    if mask is not None:
        io.write_image(root / CONTAINER_MASK, sitk.Cast(mask, sitk.sitkUInt8))
        written.append(root / CONTAINER_MASK)
    if rfs is not None:
        io.write_text(root / CONTAINER_RFS, json.dumps(float(rfs), allow_nan=False))
        written.append(root / CONTAINER_RFS)
    if hpv is not None:
        io.write_text(root / CONTAINER_HPV, json.dumps(bool(hpv)))
        written.append(root / CONTAINER_HPV)
    io.mark_dir(root, CONTAINER)
    return written


def write_container_input(
    root: Path | str, patient: str, ct: sitk.Image, pet: sitk.Image, ehr: dict[str, object]
) -> None:
    """Lay out one patient as the container receives it (used to test and to rehearse submissions)."""
    root = Path(root)
    io.write_image(root / "images" / "ct" / f"{patient}.mha", ct)
    io.write_image(root / "images" / "pet" / f"{patient}.mha", pet)
    io.write_json(root / "ehr.json", ehr)
