"""Inference on new patients, chained as the paper chains the tasks: preprocess, segment (Task 1),
HPV status (Task 3, from the images and clinical data), then recurrence-free survival (Task 2, from
the images, the predicted masks and clinical data with the predicted HPV status).

:class:`Predictor` holds the bundles' models and applies each task's predictor (declared with the
task, :mod:`hecktor.tasks`) one patient at a time, upstream first. :func:`predict_folder` runs it
over a folder of patients (restartable, one broken patient never stops the others);
:func:`predict_container` reads and writes the challenge container's files.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
from tqdm import tqdm

from hecktor import __version__, io
from hecktor.data import layout
from hecktor.data.layout import InputError, Problem
from hecktor.data.preprocess import (
    Geometry,
    PreparedCase,
    preprocess,
    probabilities_to_original_grid,
    to_original_grid,
)
from hecktor.devices import autocast_for, precision_for, resolve_device
from hecktor.errors import UserError
from hecktor.fingerprints import file_sha256, inference_code, json_digest
from hecktor.inference.sources import Bundles
from hecktor.labels import LABELS
from hecktor.tasks import TASKS
from hecktor.tasks.spec import MASK, Outcome, PatientInputs, resolve

log = logging.getLogger(__name__)

PREDICTIONS = "predictions.csv"
MANIFEST = "manifest.json"
CLINICAL_COLUMNS = (*layout.CLINICAL, "Treatment", "M-stage", "CenterID")
# a --clinical CSV may be one of the release's own tables: its outcome columns are not inputs
OUTCOME_COLUMNS = ("RFS", "Relapse", "HPV Status")


def outputs_of(tasks: tuple[str, ...]) -> dict[str, str]:
    """What a prediction of ``tasks`` writes per patient: the mask file and CSV columns, and what
    each means (from the tasks' specs)."""
    return {k: v for t in tasks for k, v in TASKS[t].outputs.items()}


@dataclass(frozen=True)
class Prediction:
    """One patient's prediction: the mask on its CT grid (None if no task segments), its row of
    predictions, and what the optional outputs are made of: its prepared case, and the labels
    and class probabilities on the prepared grid."""

    mask: sitk.Image | None
    row: dict[str, object]
    prepared: PreparedCase
    labels: np.ndarray | None = None
    probabilities: np.ndarray | None = None


class Predictor:
    """The bundles' tasks applied to one patient at a time, on this machine's best precision.

    Everything a prediction needs is in the bundles: the preprocessing settings, each network's
    plan and weights, each fold's clinical encoding and risk scale. A patient's prediction is the
    chain of the tasks' predictors on arrays; nothing is written to disk. ``overlap`` replaces the
    segmentation bundle's sliding-window overlap.
    """

    def __init__(
        self, bundles: Bundles, device: str = "auto", overlap: float | None = None
    ) -> None:
        bundles.check()
        self.tasks = bundles.tasks
        self.prepare = bundles[self.tasks[0]].settings("prepare")
        self.device = resolve_device(device)
        self.autocast = autocast_for(precision_for("auto", self.device), self.device)
        chosen = {t: bundles[t] for t in self.tasks}
        if overlap is not None and "seg" in chosen:
            chosen["seg"] = chosen["seg"].with_settings("seg", sw_overlap=overlap)
        self.steps = {
            t: resolve(TASKS[t].predictor)(chosen[t], self.device, self.autocast)
            for t in self.tasks
        }

    def __call__(self, images: layout.RawCase, clinical: dict[str, object]) -> Prediction:
        """The patient's prediction, its mask on its CT grid."""
        patient = images.patient
        prepared = preprocess(images, self.prepare)
        table = pd.DataFrame([{k: clinical.get(k) for k in CLINICAL_COLUMNS}], index=[patient])
        outcomes: dict[str, Outcome] = {}
        for task, step in self.steps.items():
            upstream = {u: outcomes[u] for u in TASKS[task].upstream}
            outcomes[task] = step(PatientInputs(patient, prepared.image, table, upstream))
        segmented = next((o for o in outcomes.values() if o.labels is not None), None)
        mask = None
        if segmented is not None:
            grid = Geometry.from_dict(prepared.meta["grid"])
            mask = to_original_grid(segmented.labels, grid, Geometry.of(images.ct))
        row = {"PatientID": patient} | {
            k: v for o in outcomes.values() for k, v in o.columns.items()
        }
        if segmented is None:
            return Prediction(mask, row, prepared)
        return Prediction(mask, row, prepared, segmented.labels, segmented.probabilities)


# --------------------------------------------------------------------------- finding patients


@dataclass(frozen=True)
class NewPatient:
    """A new patient's image files and clinical values (any of them may be missing)."""

    patient: str
    ct: Path | None
    pet: Path | None
    clinical: dict[str, object]
    problems: tuple[Problem, ...] = ()


_CT = ("__CT", "_CT", "CT")
_PET = ("__PT", "_PT", "__PET", "_PET", "PET", "PT")
_SUFFIXES = (".nii.gz", ".nii", ".mha", ".nrrd")


def _modality(folder: Path, patient: str, tags: tuple[str, ...]) -> Path | None:
    files = [p for p in sorted(folder.iterdir()) if p.is_file() and p.name.endswith(_SUFFIXES)]
    for tag in tags:
        for path in files:
            stem = path.name
            for suffix in _SUFFIXES:
                stem = stem.removesuffix(suffix)
            if stem.upper() in {f"{patient}{tag}".upper(), tag.strip("_").upper()}:
                return path
    return None


@dataclass(frozen=True)
class Found:
    """The patients of an input folder, and the clinical rows that match none of them."""

    patients: list[NewPatient]
    unused_rows: list[str]
    clinical_source: str


def read_clinical_csv(path: Path) -> tuple[pd.DataFrame, list[Problem]]:
    """A ``--clinical`` CSV indexed by patient, and the problems of its rows
    (:func:`clinical_table`)."""
    unreadable: list[Problem] = []
    frame = layout.read_csv(path, unreadable)
    if frame is None:
        raise InputError(unreadable)
    return clinical_table(frame, path)


def clinical_table(
    frame: pd.DataFrame, source: Path, warn_absent: bool = True
) -> tuple[pd.DataFrame, list[Problem]]:
    """Clinical values given as a table (a CSV, a request's rows) indexed by patient, parsed, and
    the problems of its rows.

    Its columns must be official names (``PatientID`` and any of :data:`CLINICAL_COLUMNS`; a task
    table's outcome columns are accepted and ignored): a misspelt or unknown header would silently
    turn a variable into "unknown" for every patient, so it is an :class:`InputError` that lists
    the expected names. A column left out is unknown for every patient, and the log says so.
    """
    known = ("PatientID", *CLINICAL_COLUMNS, *OUTCOME_COLUMNS)
    unknown = [c for c in frame.columns if c not in known]
    if unknown or "PatientID" not in frame.columns:
        what = f"unknown column(s) {unknown}" if unknown else "no PatientID column"
        raise InputError([Problem("(all patients)", source, f"{what}; expected 'PatientID' and any "
                                  f"of {list(CLINICAL_COLUMNS)} (names as in the official tables)")])  # fmt: skip
    absent = [c for c in CLINICAL_COLUMNS if c not in frame.columns and c != "CenterID"]
    if absent and warn_absent:
        log.warning("%s: no column(s) %s: unknown for every patient", source, absent)
    problems: list[Problem] = []
    table = layout.parse_table(frame.drop(columns=[*OUTCOME_COLUMNS], errors="ignore"), 1,
                               source, problems)  # fmt: skip
    table = table.set_index("PatientID") if len(table) else pd.DataFrame(index=pd.Index([]))
    return table, problems


def clinical_values(table: pd.DataFrame, patient: str) -> dict[str, object]:
    """A patient's row of a parsed clinical table, unknown values as None (no row: empty)."""
    if patient not in table.index:
        return {}
    return {k: None if isinstance(v, float) and math.isnan(v) else v
            for k, v in table.loc[patient].to_dict().items()}  # fmt: skip


def _folder_patients(root: Path) -> dict[str, tuple[Path | None, Path | None]]:
    found = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if layout.is_hidden(folder.name):
            continue
        found[folder.name] = (
            _modality(folder, folder.name, _CT),
            _modality(folder, folder.name, _PET),
        )
    return found


# nnU-Net's naming: one folder, <CASE>_<channel>.<suffix>; channel 0000 the CT, 0001 the PET
_NNUNET = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})(?P<suffix>\.nii\.gz|\.nii|\.mha|\.nrrd)$")
_NNUNET_CHANNELS = {"0000": 0, "0001": 1}  # CT, PET


def _nnunet_patients(root: Path) -> dict[str, tuple[Path | None, Path | None]]:
    """``CASE_0000`` (CT) and ``CASE_0001`` (PET) files of one folder, by case."""
    found: dict[str, list[Path | None]] = {}
    for path in sorted(p for p in root.iterdir() if p.is_file()):
        match = _NNUNET.match(path.name)
        if match is None or layout.is_hidden(path.name):
            continue
        channel = _NNUNET_CHANNELS.get(match["channel"])
        if channel is None:
            log.warning("%s: channel %s is neither CT (0000) nor PET (0001): ignored", path,
                        match["channel"])  # fmt: skip
            continue
        found.setdefault(match["case"], [None, None])[channel] = path
    return {case: (ct, pet) for case, (ct, pet) in found.items()}


def find_patients(
    root: Path | str, clinical: Path | str | None = None, no_clinical: bool = False
) -> Found:
    """The patients of a release-layout folder, of a folder of ``<PID>/`` subfolders, or of a
    folder in nnU-Net's naming (``<PID>_0000`` the CT, ``<PID>_0001`` the PET).

    In a subfolder, CT and PET are ``<PID>__CT`` / ``<PID>__PT`` (or ``CT`` / ``PET``) in NIfTI or
    MetaImage. Clinical values come from ``clinical`` (see :func:`read_clinical_csv`), else from
    the release's tables; a folder of subfolders needs ``clinical`` or ``no_clinical``. A patient
    without a clinical row fails (never a silent "unknown"); rows of no patient are reported.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError([Problem("-", root, "input folder not found")])
    problems: list[Problem] = []
    table_problems: list[Problem] = []
    frame = pd.DataFrame(index=pd.Index([]))
    if any((root / layout.TASK_DIR[t]).is_dir() for t in layout.TASKS):
        release = layout.scan_release(root)
        found = {
            p: (c.ct, c.pet) for p, c in ((p, release.image_case(p)) for p in release.patients())
        }
        # a patient none of whose copies is complete fails, naming what is wrong
        problems += [p for p in release.problems if p.patient not in {"-", *found}]
        found |= {p.patient: (None, None) for p in problems}
        source = f"the release's tables ({root})"
        if clinical is None and not no_clinical:
            merged = layout.clinical_frame(layout.read_tables(release, table_problems))
            frame = merged.set_index("PatientID") if len(merged) else frame
    else:
        found = _nnunet_patients(root) or _folder_patients(root)
        problems += [Problem(p, root / p, why) for p in found if (why := layout.id_problem(p))]
        if clinical is None and not no_clinical:
            raise InputError([Problem("(all patients)", root, "no clinical data: give --clinical "
                                      "CSV, or --no-clinical to predict with every clinical value "
                                      "unknown")])  # fmt: skip
    if no_clinical:
        source = "none (--no-clinical: every clinical value unknown)"
    elif clinical is not None:
        frame, table_problems = read_clinical_csv(Path(clinical))
        source = str(clinical)
    unused = sorted(
        {str(p) for p in frame.index if p not in found}
        | {p.patient for p in table_problems if p.patient.startswith("(row")}
    )
    patients = []
    for pid, (ct, pet) in sorted(found.items()):
        mine = [p for p in problems + table_problems if p.patient == pid]
        if not any(p.patient == pid for p in problems):  # else its files are named already
            if ct is None or not ct.is_file():
                mine.append(Problem(pid, root / pid, "no CT file"))
            if pet is None or not pet.is_file():
                mine.append(Problem(pid, root / pid, "no PET file"))
        values: dict[str, object] = {}
        if not no_clinical:
            if pid in frame.index:
                values = clinical_values(frame, pid)
            else:
                mine.append(Problem(pid, Path(clinical) if clinical else root, "no clinical "
                                    "row for this patient (add one: empty cells are unknown; or "
                                    "use --no-clinical)"))  # fmt: skip
        patients.append(NewPatient(pid, ct, pet, values, tuple(dict.fromkeys(mine))))
    for problem in table_problems:
        if problem.patient not in found:
            log.warning("%s", problem)
    if unused:
        log.warning("clinical rows of no input patient, ignored: %s", ", ".join(unused))
    return Found(patients, unused, source)


def read_images(patient: NewPatient) -> layout.RawCase:
    """Read and check one patient's CT and PET; raise :class:`InputError` naming everything wrong
    with the patient at once (its files and its clinical row)."""
    problems = list(patient.problems)
    images = None
    if patient.ct and patient.pet and patient.ct.is_file() and patient.pet.is_file():
        try:
            images = layout.read_case(layout.CaseFiles(patient.patient, 0, patient.ct, patient.pet))
        except InputError as err:
            problems += err.problems
    if problems or images is None:
        raise InputError(problems)
    return images


# --------------------------------------------------------------------------- batch


def _reason(err: Exception) -> str:
    if isinstance(err, InputError):
        return "; ".join(f"{p.file}: {p.message}" for p in err.problems)
    return f"{type(err).__name__}: {err}"


def _models_key(described: dict[str, dict], overlap: float | None = None) -> str:
    """What a result depends on besides the patient: the models' digests, the options that
    change what they predict, and the code that computes it (this package's version and the
    digest of its inference modules)."""
    return json.dumps({"models": {t: m["digest"] for t, m in described.items()},
                       "overlap": overlap, "package": __version__, "code": inference_code()},
                      sort_keys=True)  # fmt: skip


def input_key(models: str, patient: NewPatient) -> str | None:
    """What a finished patient's result depends on: the models, the bytes of its CT and PET and
    its clinical row. None when its files cannot be read (it is then predicted, and fails)."""
    if patient.problems or patient.ct is None or patient.pet is None:
        return None
    try:
        files = [file_sha256(patient.ct), file_sha256(patient.pet)]
    except OSError:
        return None
    return json_digest([models, files, patient.clinical], 64)


@dataclass(frozen=True)
class Extras:
    """What ``predict`` writes beside each mask, when asked: the class probabilities on the CT
    grid (``<PID>.npz``, nnU-Net's ``--save_probabilities``) and a picture to check the result by
    eye (``qc/<PID>.png``, drawn by ``qc``)."""

    probabilities: bool = False
    qc: Callable[[Prediction, Path], None] | None = None

    def files(self, output: Path, pid: str) -> list[Path]:
        """The extra files of one patient."""
        wanted = [output / f"{pid}.npz"] if self.probabilities else []
        return wanted + ([output / "qc" / f"{pid}.png"] if self.qc else [])

    def write(self, prediction: Prediction, output: Path, pid: str, ct: sitk.Image) -> None:
        if self.probabilities and prediction.probabilities is not None:
            grid = Geometry.from_dict(prediction.prepared.meta["grid"])
            values = probabilities_to_original_grid(prediction.probabilities, grid, Geometry.of(ct))
            with io.atomic_path(output / f"{pid}.npz") as tmp:  # keeps the .npz extension
                np.savez_compressed(tmp, probabilities=values)
        if self.qc:
            (output / "qc").mkdir(exist_ok=True)
            self.qc(prediction, output / "qc" / f"{pid}.png")


def _reused(part: Path, mask: Path, key: str | None, extras: list[Path]) -> bool:
    if key is None or not part.is_file():
        return False
    try:
        done = json.loads(part.read_text())
    except (OSError, ValueError):
        return False
    return (
        done.get("key") == key
        and (mask.is_file() or not done.get("mask", True))
        and all(path.is_file() for path in extras)
    )


def _forget(parts: Path, output: Path, pid: str) -> None:
    """Remove one patient's earlier results (this command wrote them)."""
    (parts / f"{pid}.json").unlink(missing_ok=True)
    for path in (output / f"{pid}.nii.gz", output / f"{pid}.npz", output / "qc" / f"{pid}.png"):
        path.unlink(missing_ok=True)


def _remove_absent(parts: Path, output: Path, present: set[str]) -> list[str]:
    """Remove the results of patients no longer in the input (this command wrote them)."""
    removed = sorted(p.stem for p in parts.glob("*.json") if p.stem not in present)
    for pid in removed:
        _forget(parts, output, pid)
    if removed:
        log.warning("results of patients no longer in the input removed: %s", ", ".join(removed))
    return removed


def _predict_each(bundles: Bundles, patients: list[NewPatient], parts: Path, output: Path,
                  key: str, device: str, overlap: float | None, extras: Extras,
                  ) -> tuple[list[dict[str, str]], int]:  # fmt: skip
    """Predict every patient whose earlier result does not hold (the models load on the first);
    returns the failures and how many were reused."""
    failures: list[dict[str, str]] = []
    skipped = 0
    predictor: Predictor | None = None
    for patient in tqdm(patients, desc="predict", unit="patient"):
        pid = patient.patient
        part, mask_path = parts / f"{pid}.json", output / f"{pid}.nii.gz"
        patient_key = input_key(key, patient)
        if _reused(part, mask_path, patient_key, extras.files(output, pid)):
            skipped += 1
            continue
        _forget(parts, output, pid)  # no stale result, whatever happens next
        try:
            images = read_images(patient)
            predictor = predictor or Predictor(bundles, device, overlap)
            prediction = predictor(images, patient.clinical)
            if prediction.mask is not None:
                io.write_image(mask_path, prediction.mask)
            extras.write(prediction, output, pid, images.ct)
        except io.WriteError:
            _forget(parts, output, pid)
            raise  # a full disk stops the run: every patient after this one would fail alike
        except (InputError, RuntimeError, ValueError, OSError) as err:
            _forget(parts, output, pid)
            failures.append({"PatientID": pid, "reason": _reason(err)})
            log.error("%s: skipped: %s", pid, _reason(err))
            continue
        io.write_json(part, {"key": patient_key, "models": key, "row": prediction.row,
                             "mask": prediction.mask is not None})  # fmt: skip
    return failures, skipped


def write_label_tables(output: Path) -> list[Path]:
    """The masks' label table for ITK-SNAP (label description file) and 3D Slicer (colour table)
    beside them, so a mask opens with its names and colours."""
    itksnap = ["# ITK-SnAP Label Description File: hecktor masks",
               "# IDX  -R-  -G-  -B-  -A--  VIS MSH  LABEL",
               '    0    0    0    0     0   0   0    "background"']  # fmt: skip
    slicer = ["# 3D Slicer colour table: hecktor masks", "0 background 0 0 0 0"]
    for value, name, (r, g, b) in LABELS:
        itksnap.append(f'{value:5d} {r:4d} {g:4d} {b:4d}     1   1   1    "{name}"')
        slicer.append(f"{value} {name} {r} {g} {b} 255")
    written = [output / "labels.itksnap.txt", output / "labels.slicer.ctbl"]
    for path, lines in zip(written, (itksnap, slicer), strict=True):
        io.write_text(path, "\n".join(lines) + "\n")
    return written


def predict_folder(
    bundles: Bundles,
    input_dir: Path | str,
    output: Path | str,
    clinical: Path | str | None = None,
    device: str = "auto",
    no_clinical: bool = False,
    overlap: float | None = None,
    extras: Extras = Extras(),
) -> dict:
    """Predict every patient under ``input_dir``; returns the manifest written beside the outputs.

    Writes ``<PID>.nii.gz`` (on the patient's CT grid) with its label tables, ``predictions.csv``,
    ``manifest.json`` and any :class:`Extras`, each atomically, into ``output``: a new or empty
    folder, or an earlier ``predict`` output, which this process alone writes (its lock). The
    folder is marked incomplete before anything in it changes (``manifest.json`` says
    ``running``, ``predictions.csv`` is removed) and complete only at the end. A patient whose
    models, options, code, image bytes and clinical row are those of its earlier result is
    reused, so a rerun after a kill continues; anything changed is predicted again, and the
    results of patients no longer in the input are removed (and listed). A patient that cannot
    be read is reported (in the log and the manifest) and the others go on.
    """
    output = Path(output)
    if overlap is not None and "seg" in bundles.tasks:  # a bad option fails before any work
        bundles["seg"].with_settings("seg", sw_overlap=overlap)
    inputs = [input_dir, clinical, *(bundles[t].root for t in bundles.tasks)]
    io.claim_dir(output, "predict", inputs)
    found = find_patients(input_dir, clinical, no_clinical)
    patients = found.patients
    described = bundles.describe()  # digests read every weights file: once per run
    manifest = {
        "status": "running",
        "input": str(Path(input_dir).resolve()),
        "clinical": found.clinical_source,
        "clinical_rows_unused": found.unused_rows,
        "models": described,
        "overlap": overlap,
        "patients": len(patients),
        "tasks": list(bundles.tasks),
        "outputs": outputs_of(bundles.tasks),
    }
    with io.owned_dir(output, "predict", inputs):
        io.write_json(output / MANIFEST, manifest)  # incomplete, before anything else changes
        (output / PREDICTIONS).unlink(missing_ok=True)
        parts = output / ".parts"
        parts.mkdir(exist_ok=True)
        key = _models_key(described, overlap)
        removed = _remove_absent(parts, output, {p.patient for p in patients})
        failures, skipped = _predict_each(
            bundles, patients, parts, output, key, device, overlap, extras
        )
        failed = {f["PatientID"] for f in failures}
        rows = [
            json.loads((parts / f"{p.patient}.json").read_text())["row"]
            for p in patients
            if p.patient not in failed and (parts / f"{p.patient}.json").is_file()
        ]
        if MASK in manifest["outputs"]:
            write_label_tables(output)
        columns = ["PatientID", *(k for k in manifest["outputs"] if k != MASK)]
        io.write_text(output / PREDICTIONS, pd.DataFrame(rows, columns=columns).to_csv(index=False))
        manifest |= {"status": "complete", "predicted": len(rows), "reused": skipped,
                     "removed": removed, "failed": failures}  # fmt: skip
        io.write_json(output / MANIFEST, manifest)
    log.info("predicted %d of %d patients (%d reused, %d failed) -> %s",
             len(rows), len(patients), skipped, len(failures), output)  # fmt: skip
    return manifest


def predict_container(
    bundles: Bundles,
    input_root: Path | str = "/input",
    output_root: Path | str = "/output",
    device: str = "auto",
) -> list[Path]:
    """One patient in the challenge layout in, the three official outputs out (the bundles must
    hold Tasks 1, 2 and 3)."""
    missing = [t for t in ("seg", "hpv", "rfs") if t not in bundles.tasks]
    if missing:
        raise UserError(f"--container writes every challenge output: no bundle for {missing}")
    io.claim_files(output_root, layout.CONTAINER_OUTPUTS, layout.CONTAINER)  # before any work
    data = layout.read_container_input(input_root)
    problems: list[Problem] = []
    ehr_path = Path(input_root) / "ehr.json"
    if not ehr_path.is_file():
        log.warning("%s: %s missing: every clinical value unknown", data.patient, ehr_path)
    unknown = sorted(k for k in data.ehr if k not in CLINICAL_COLUMNS)
    if unknown:  # a submission must not crash on a key the organisers add: say it, go on
        log.warning("%s: %s: unknown key(s) %s ignored; known: %s", data.patient, ehr_path,
                    unknown, list(CLINICAL_COLUMNS))  # fmt: skip
    ehr = {k: v for k, v in data.ehr.items() if k in CLINICAL_COLUMNS}
    frame = pd.DataFrame([{"PatientID": data.patient} | {k: str(v) for k, v in ehr.items()}])
    table = layout.parse_table(frame, 1, ehr_path, problems)
    if problems:
        raise InputError(problems)
    clinical = {k: v for k, v in table.iloc[0].to_dict().items() if k != "PatientID"}
    images = layout.RawCase(data.patient, data.ct, data.pet, None)
    prediction = Predictor(bundles, device)(images, clinical)
    assert prediction.mask is not None  # Task 1 ran
    row = prediction.row
    return layout.write_container_outputs(
        output_root, prediction.mask, float(row["RFS_risk"]), bool(row["HPV_status"])
    )
