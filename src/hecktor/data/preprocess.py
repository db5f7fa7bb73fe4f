"""The official HECKTOR preprocessing, with spacing and crop size as parameters, and its inverse.

Recipe (HECKTOR 2025 docker template): find the head from the PET (top part of the scan, z-score,
threshold, largest connected component = brain, its centroid), place a fixed physical box around it,
resample CT and PET into that box on an isotropic, identity-direction grid (B-spline), clip and scale
the CT, z-score the PET over its non-zero voxels. The box's grid is aligned with the CT/PET overlap
box, as when the official code resamples the overlap first and crops whole voxels after.

Differences, on purpose: the box is resampled in one step (no intermediate full 1 mm volume), and a
box that leaves the scan is padded (CT -1024 HU, PET 0) instead of clipped, so every case has the same
shape. Masks go back to the original CT grid with :func:`to_original_grid` (nearest neighbour).
"""

from __future__ import annotations

import errno
import json
import logging
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import blosc2
import numpy as np
import pandas as pd
import SimpleITK as sitk
from scipy import ndimage
from tqdm import tqdm

from hecktor import io
from hecktor.config import PrepareConfig
from hecktor.data import layout
from hecktor.data.layout import InputError, Problem, RawCase
from hecktor.errors import UserError

log = logging.getLogger(__name__)

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
_DETECT_SPACING_MM = 4.0


@dataclass(frozen=True)
class Geometry:
    """A voxel grid in physical space: size (x, y, z), spacing (mm), origin (mm, LPS), direction."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...] = IDENTITY

    @classmethod
    def of(cls, image: sitk.Image) -> Geometry:
        return cls(
            tuple(int(v) for v in image.GetSize()),  # type: ignore[arg-type]
            tuple(float(v) for v in image.GetSpacing()),  # type: ignore[arg-type]
            tuple(float(v) for v in image.GetOrigin()),  # type: ignore[arg-type]
            tuple(float(v) for v in image.GetDirection()),
        )

    @classmethod
    def from_dict(cls, data: dict) -> Geometry:
        return cls(*(tuple(data[k]) for k in ("size", "spacing", "origin", "direction")))  # type: ignore[arg-type]

    def to_dict(self) -> dict:
        return {k: list(v) for k, v in asdict(self).items()}

    def image(self, array: np.ndarray | None = None, pixel: int = sitk.sitkUInt8) -> sitk.Image:
        """An image on this grid, from a (Z, Y, X) array or empty."""
        if array is None:
            image = sitk.Image([int(v) for v in self.size], pixel)
        else:
            if array.shape != tuple(reversed(self.size)):
                raise ValueError(
                    f"array shape {array.shape} does not match grid size {self.size} (x, y, z)"
                )
            image = sitk.GetImageFromArray(array)
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image


def _resample(image: sitk.Image, grid: Geometry, interpolator: int, default: float) -> sitk.Image:
    return sitk.Resample(
        image, grid.image(), sitk.Transform(), interpolator, default, image.GetPixelID()
    )


def _overlap_grid(ct: sitk.Image, pet: sitk.Image, spacing: float) -> Geometry:
    box = layout.overlap_box(ct, pet)
    if box is None:
        raise UserError("CT and PET do not overlap")
    lo, hi = box
    size = tuple(int(v) for v in np.floor((hi - lo) / spacing) + 1)
    return Geometry(size, (spacing,) * 3, tuple(float(v) for v in lo))  # type: ignore[arg-type]


def brain_centre(ct: sitk.Image, pet: sitk.Image, cfg: PrepareConfig) -> np.ndarray:
    """Physical centroid (mm) of the largest high-uptake blob in the top of the PET (the brain)."""
    grid = _overlap_grid(ct, pet, _DETECT_SPACING_MM)
    array = sitk.GetArrayFromImage(_resample(pet, grid, sitk.sitkLinear, 0.0))
    top = max(1, round(array.shape[0] * cfg.brain_top_fraction))
    part = array[-top:]
    std = part.std()
    z = (part - part.mean()) / (std if std > 0 else 1.0)
    labels, count = ndimage.label(z > cfg.brain_zscore)
    if count == 0:
        index = np.array([array.shape[0] - top / 2, array.shape[1] / 2, array.shape[2] / 2])
    else:
        sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, count + 1))
        largest = int(np.argmax(sizes)) + 1
        zc, yc, xc = ndimage.center_of_mass(labels == largest)
        index = np.array([zc + array.shape[0] - top, yc, xc])
    return np.array(grid.origin) + index[::-1] * _DETECT_SPACING_MM


def crop_grid(ct: sitk.Image, pet: sitk.Image, cfg: PrepareConfig) -> tuple[Geometry, np.ndarray]:
    """The output grid: the configured box around the brain centre plus offset, on the overlap
    lattice; with ``inside_scan``, moved back inside the overlap along each axis where it would
    leave it (and the overlap is larger than the box), as the official script does."""
    spacing = np.array(cfg.spacing_mm)
    size = np.maximum(np.round(np.array(cfg.crop_mm) / spacing).astype(int), 1)
    centre = brain_centre(ct, pet, cfg) + np.array(cfg.crop_offset_mm)
    lo, hi = layout.overlap_box(ct, pet)  # type: ignore[misc]
    start = centre - (size - 1) * spacing / 2
    if cfg.inside_scan:
        last = hi - (size - 1) * spacing  # the highest start that keeps the box inside
        start = np.where(last >= lo, np.clip(start, lo, np.maximum(last, lo)), start)
    origin = lo + np.round((start - lo) / spacing) * spacing
    grid = Geometry(
        tuple(int(v) for v in size),  # type: ignore[arg-type]
        tuple(float(v) for v in spacing),  # type: ignore[arg-type]
        tuple(float(v) for v in origin),  # type: ignore[arg-type]
    )
    return grid, centre


def normalise_ct(ct: np.ndarray, cfg: PrepareConfig) -> np.ndarray:
    """Clip to the HU window and scale linearly to [-ct_scale, ct_scale]."""
    lo, hi = cfg.ct_window_hu
    return ((np.clip(ct, lo, hi) - lo) / (hi - lo) * 2 - 1) * cfg.ct_scale


def normalise_pet(pet: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Z-score over non-zero voxels; returns the mean and std used (SUV = z * std + mean)."""
    values = pet[pet > 0]
    mean = float(values.mean()) if values.size else 0.0
    std = float(values.std()) if values.size > 1 and values.std() > 0 else 1.0
    return (pet - mean) / std, mean, std


@dataclass
class PreparedCase:
    """One preprocessed case: (2, Z, Y, X) float32 [CT, PET], label (Z, Y, X) or None, metadata."""

    image: np.ndarray
    label: np.ndarray | None
    meta: dict


def preprocess(case: RawCase, cfg: PrepareConfig) -> PreparedCase:
    """Apply the recipe to one patient's images."""
    grid, centre = crop_grid(case.ct, case.pet, cfg)
    interp = sitk.sitkBSpline if cfg.interpolator == "bspline" else sitk.sitkLinear
    ct = sitk.GetArrayFromImage(
        _resample(sitk.Cast(case.ct, sitk.sitkFloat32), grid, interp, -1024.0)
    )
    pet = sitk.GetArrayFromImage(
        _resample(sitk.Cast(case.pet, sitk.sitkFloat32), grid, interp, 0.0)
    )
    pet = np.clip(pet, 0, None)
    suv_max = float(pet.max())
    pet_z, pet_mean, pet_std = normalise_pet(pet)
    # float16 values, as stored (save_case): a new patient's prediction sees what training saw
    image = np.stack([normalise_ct(ct, cfg), pet_z]).astype(np.float16).astype(np.float32)
    label, kept = None, None
    if case.label is not None:
        label = sitk.GetArrayFromImage(_resample(case.label, grid, sitk.sitkNearestNeighbor, 0))
        label = label.astype(np.uint8)
        original_mm3 = (sitk.GetArrayViewFromImage(case.label) > 0).sum() * np.prod(
            case.label.GetSpacing()
        )
        crop_mm3 = (label > 0).sum() * np.prod(grid.spacing)
        kept = 1.0 if original_mm3 == 0 else round(float(min(crop_mm3 / original_mm3, 1.0)), 4)
    meta = {
        "patient": case.patient,
        "centre": layout.centre_of(case.patient),
        "grid": grid.to_dict(),
        "ct_grid": Geometry.of(case.ct).to_dict(),
        "brain_centre_mm": [round(float(v), 3) for v in centre - np.array(cfg.crop_offset_mm)],
        "pet_mean": pet_mean,
        "pet_std": pet_std,
        "suv_max": suv_max,
        "lesion_volume_kept": kept,
    }
    return PreparedCase(image, label, meta)


def to_original_grid(mask: np.ndarray, grid: Geometry, original: Geometry) -> sitk.Image:
    """Put a (Z, Y, X) label mask on the preprocessed ``grid`` back onto the ``original`` CT grid.

    Nearest neighbour, background outside the box; the result has the original's exact size,
    spacing, origin and direction.
    """
    image = grid.image(np.ascontiguousarray(mask, dtype=np.uint8))
    return sitk.Resample(
        image, original.image(), sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8
    )


def probabilities_to_original_grid(
    probabilities: np.ndarray, grid: Geometry, original: Geometry
) -> np.ndarray:
    """Class probabilities (classes, Z, Y, X) on the preprocessed ``grid``, put back onto the
    ``original`` CT grid by linear interpolation (background outside the box), float16."""
    out = []
    for index, channel in enumerate(np.asarray(probabilities, dtype=np.float32)):
        image = grid.image(np.ascontiguousarray(channel))
        outside = 1.0 if index == 0 else 0.0
        resampled = sitk.Resample(image, original.image(), sitk.Transform(), sitk.sitkLinear,
                                  outside, sitk.sitkFloat32)  # fmt: skip
        out.append(sitk.GetArrayFromImage(resampled).astype(np.float16))
    return np.stack(out)


# --------------------------------------------------------------------------- storage


IMAGE, LABEL, FOREGROUND = "image.b2nd", "label.b2nd", "foreground.npz"
WHOLE = (slice(None), slice(None), slice(None))  # the box of a whole volume
CHUNK = 64  # voxels per chunk side: a patch read decompresses only the chunks it overlaps
# zstd at level 1 after byte shuffling: measured on paper-scale cases (288^3, 1 mm), 26 MB per case
# (215 MB as float32 .npy) and 0.06 s per 240^3 region read on one core (README, GPU section)
_CPARAMS = {"codec": blosc2.Codec.ZSTD, "clevel": 1, "filters": [blosc2.Filter.SHUFFLE]}


@dataclass(frozen=True)
class Foreground:
    """Where the labelled voxels are in a volume of ``shape``: their flat (C-order) indices,
    sorted, and each one's class. Found once when a case is prepared (as nnU-Net does), so that a
    foreground-centred crop needs no search of the volume."""

    shape: tuple[int, int, int]
    indices: np.ndarray
    classes: np.ndarray

    def labelled(self) -> np.ndarray:
        """The flat index of every labelled voxel (any class), sorted."""
        return self.indices

    def of(self, value: int) -> np.ndarray:
        """The flat indices of one class's voxels, sorted."""
        return self.indices[self.classes == value]

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"shape": np.array(self.shape), "indices": self.indices, "classes": self.classes}

    @classmethod
    def empty(cls, shape: tuple[int, int, int]) -> Foreground:
        return cls(shape, np.zeros(0, np.uint32), np.zeros(0, np.uint8))

    @classmethod
    def from_arrays(cls, arrays) -> Foreground:
        shape = tuple(int(s) for s in arrays["shape"])
        return cls(shape, arrays["indices"], arrays["classes"])  # type: ignore[arg-type]


def foreground_of(label: np.ndarray) -> Foreground:
    """The :class:`Foreground` of a label map (its classes: every non-zero value)."""
    flat = np.asarray(label).ravel()
    indices = np.flatnonzero(flat)
    kind = np.uint32 if flat.size < 2**32 else np.int64
    shape = tuple(int(s) for s in np.shape(label))
    return Foreground(shape, indices.astype(kind), flat[indices].astype(np.uint8))  # type: ignore[arg-type]


def _write_array(path: Path, array: np.ndarray, chunks: tuple[int, ...]) -> None:
    """Store ``array``, then read it back: a full disk must not leave a short array behind."""
    chunks = tuple(min(c, s) for c, s in zip(chunks, array.shape, strict=True))
    array = np.ascontiguousarray(array)
    try:
        blosc2.asarray(array, urlpath=str(path), mode="w", chunks=chunks, cparams=_CPARAMS)
    except RuntimeError as err:  # Blosc2 says only "Error while creating the NDArray"
        if shutil.disk_usage(path.parent).free < array.nbytes:
            raise OSError(errno.ENOSPC, f"no space left on device for {path}") from err
        raise
    if not np.array_equal(blosc2.open(str(path), mode="r")[...], array):
        raise OSError(f"{path}: the stored array does not read back as written")


def save_case(folder: Path, prepared: PreparedCase) -> None:
    """Store a case for patch reads: images as float16 (they are normalised), labels as uint8,
    both compressed in 64^3 chunks, and where each class's voxels are; each file read back."""
    folder.mkdir(parents=True, exist_ok=True)
    _write_array(folder / IMAGE, prepared.image.astype(np.float16), (1, CHUNK, CHUNK, CHUNK))
    if prepared.label is not None:
        label = np.asarray(prepared.label, dtype=np.uint8)
        _write_array(folder / LABEL, label, (CHUNK, CHUNK, CHUNK))
        np.savez_compressed(folder / FOREGROUND, **foreground_of(label).to_arrays())
        io.check_zip(folder / FOREGROUND)
    io.write_text(folder / "meta.json", json.dumps(prepared.meta, indent=1))


class StoredCase:
    """A prepared case on disk, read a region at a time (what training patches need)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        path = folder / IMAGE
        if not path.is_file():
            raise UserError(f"{path}: no prepared image; prepare the release again "
                             "(`hecktor prepare`, or `dvc repro prepare`)")  # fmt: skip
        self._image = blosc2.open(str(path), mode="r")
        self.has_label = (folder / LABEL).is_file()
        self._label = blosc2.open(str(folder / LABEL), mode="r") if self.has_label else None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self._image.shape[1:])  # type: ignore[return-value]

    def foreground(self) -> Foreground:
        """Where each class's voxels are, as stored (no class without a label)."""
        if not self.has_label:
            return Foreground.empty(self.shape)
        with np.load(self.folder / FOREGROUND) as found:
            return Foreground.from_arrays(found)

    def whole_label(self) -> np.ndarray | None:
        """The label map (uint8; None without one), without reading the image."""
        return self._label[...] if self._label is not None else None

    def read(
        self, box: tuple[slice, slice, slice], dtype: type = np.float32
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Image (2, ...) (float32, or float16 as stored) and label (...) uint8 (None without
        one) of a region."""
        image = self._image[(slice(None), *box)].astype(dtype, copy=False)
        label = self._label[box] if self._label is not None else None
        return image, label


def read_meta(root: Path | str, patient: str) -> dict:
    """A prepared case's metadata, without reading its arrays."""
    return json.loads((Path(root) / patient / "meta.json").read_text())


def load_prepared(root: Path | str, patient: str) -> PreparedCase:
    """Read a whole prepared case: image (2, Z, Y, X) float32, label or None, metadata."""
    image, label = StoredCase(Path(root) / patient).read(WHOLE)
    return PreparedCase(image, label, read_meta(root, patient))


def _process(args: tuple[layout.CaseFiles, PrepareConfig, Path]) -> tuple[str, list[Problem]]:
    case, cfg, out = args
    try:
        images = layout.read_case(case)
    except InputError as err:
        return case.patient, err.problems
    try:
        save_case(out / case.patient, preprocess(images, cfg))
    except ValueError as err:
        return case.patient, [Problem(case.patient, case.ct, str(err))]
    return case.patient, []


def _process_all(
    jobs: list[tuple[layout.CaseFiles, PrepareConfig, Path]], workers: int
) -> list[tuple[str, list[Problem]]]:
    """Preprocess every case, in ``workers`` processes where more than one; each case's problems."""
    bar = tqdm(total=len(jobs), desc="prepare", unit="patient")
    results = []
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            for result in pool.map(_process, jobs):
                results.append(result)
                bar.update()
    else:
        for job in jobs:
            results.append(_process(job))
            bar.update()
    bar.close()
    return results


def _case_index(
    root: Path, patients: list[str], members: dict[int, set[str]], clinical: pd.DataFrame
) -> pd.DataFrame:
    """One row per prepared case: centre (the clinical table's where it has one), label, tasks and
    the share of the labelled lesion volume the crop keeps."""
    index = pd.DataFrame(
        {
            "PatientID": patients,
            "CenterID": [layout.centre_of(p) for p in patients],
            "has_label": [(root / p / LABEL).is_file() for p in patients],
            **{f"task{t}": [p in members[t] for p in patients] for t in layout.TASKS},
        }
    )
    if len(clinical):
        centres = dict(zip(clinical["PatientID"], clinical["CenterID"], strict=True))
        index["CenterID"] = [
            centres.get(p, c) for p, c in zip(patients, index["CenterID"], strict=True)
        ]
    kept = {p: read_meta(root, p)["lesion_volume_kept"] for p in patients}
    index["lesion_volume_kept"] = [kept[p] for p in patients]
    return index


def _warn_cut_lesions(index: pd.DataFrame) -> None:
    """Name the cases whose crop cuts off more than a tenth of the labelled lesion volume."""
    cut = index[index["lesion_volume_kept"].fillna(1.0) < 0.9]
    for patient, value in zip(cut["PatientID"], cut["lesion_volume_kept"], strict=True):
        log.warning(
            "%s: the crop keeps only %.0f%% of the labelled lesion volume; "
            "check prepare.crop_mm and prepare.crop_offset_mm",
            patient,
            100 * value,
        )


def _summary(index: pd.DataFrame, members: dict[int, set[str]], cfg: PrepareConfig) -> dict:
    """The prepared cohort in numbers (``summary.json``)."""
    return {
        "patients": len(index),
        "labelled": int(index["has_label"].sum()),
        "per_task": {f"task{t}": len(members[t]) for t in layout.TASKS},
        "per_centre": index["CenterID"].value_counts().sort_index().to_dict(),
        "spacing_mm": list(cfg.spacing_mm),
        "lesion_volume_kept_min": float(index["lesion_volume_kept"].min()),
        "shape_zyx": list(cfg.shape_zyx),
    }


def prepare_release(release_root: Path | str, out: Path | str, cfg: PrepareConfig) -> pd.DataFrame:
    """Validate and preprocess a whole release into ``out``; all-or-nothing.

    Every problem of every patient and table is collected; if there is any, :class:`InputError`
    lists them all and ``out`` is left untouched. Returns the case index written to ``cases.csv``.
    """
    io.claim_dir(out, "prepare", [release_root])
    release = layout.scan_release(release_root)
    problems = list(release.problems)
    tables = layout.read_tables(release, problems)
    patients = release.patients()
    with io.atomic_dir(out, "prepare", [release_root]) as tmp:
        jobs = [(release.image_case(p), cfg, tmp) for p in patients]
        for _, found in _process_all(jobs, cfg.workers):
            problems.extend(found)
        if problems:
            raise InputError(problems)
        members = {t: {c.patient for c in release.cases.get(t, [])} for t in layout.TASKS}
        clinical = layout.clinical_frame(tables)
        index = _case_index(tmp, patients, members, clinical)
        _warn_cut_lesions(index)
        index.to_csv(tmp / "cases.csv", index=False)
        clinical.to_csv(tmp / "clinical.csv", index=False)
        (tmp / "summary.json").write_text(json.dumps(_summary(index, members, cfg), indent=2))
    log.info("prepared %d patients into %s", len(patients), out)
    return index


def load_summary(prepared: Path | str) -> dict:
    """A prepared dataset's ``summary.json`` (grid, counts, settings)."""
    return json.loads((Path(prepared) / "summary.json").read_text())


def grid_of(summary: dict) -> tuple[tuple[float, float, float], tuple[int, int, int]]:
    """Spacing (z, y, x) in mm and volume shape (z, y, x) from a prepared dataset's summary (as
    ``summary.json`` and a bundle's ``prepared`` entry hold it: spacing in x, y, z)."""
    spacing = tuple(float(s) for s in reversed(summary["spacing_mm"]))
    return spacing, tuple(int(v) for v in summary["shape_zyx"])  # type: ignore[return-value]


def prepared_grid(prepared: Path | str) -> tuple[tuple[float, float, float], tuple[int, int, int]]:
    """Spacing (z, y, x) in mm and volume shape (z, y, x) of a prepared dataset."""
    return grid_of(load_summary(prepared))
