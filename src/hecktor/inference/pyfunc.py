"""The registered models as MLflow models: ``mlflow.pyfunc.load_model("models:/hecktor-seg@champion")``
predicts patients and ``mlflow models serve`` answers REST requests with the same code as
``hecktor predict``.

A task's MLflow model holds its bundle (:mod:`hecktor.bundle`: weights load with
``weights_only=True``) and names, in its configuration, the registered versions of the tasks it
builds on (``models:/hecktor-seg/3``), fetched from the registry when it loads: each task's weights
are stored once, and a prediction chains the versions that were registered together. Each bundle
is checked against the digest recorded when it was registered. Its code is this package
(installed with it; nothing is unpickled), made the model by a three-line file.

Input: one row per patient, ``PatientID``, ``CT`` and ``PET`` (image files the predicting
machine reads: NIfTI, MetaImage or NRRD) and any of the official clinical columns (missing or
empty: unknown). Output: one row per patient, ``predictions.csv``'s columns and, where a task
segments, the GTVp and GTVn volumes, the number of nodes and the mask's path (written only when
the parameter ``output_dir`` names a folder: new, empty or this model's own, never one that holds
the request's images or anything else, as :func:`hecktor.io.owned_dir` rules).
"""

from __future__ import annotations

import shutil
import weakref
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import SimpleITK as sitk
from mlflow.exceptions import INVALID_PARAMETER_VALUE, RESOURCE_CONFLICT, MlflowException
from mlflow.models import ModelSignature
from mlflow.pyfunc import PythonModel, PythonModelContext
from mlflow.types.schema import AnyType, ColSpec, ParamSchema, ParamSpec, Schema

from hecktor import io, locks
from hecktor.bundle import Bundle, bundle_folder, load_bundle
from hecktor.data.layout import InputError, Problem
from hecktor.errors import UserError
from hecktor.inference.batch import (
    CLINICAL_COLUMNS,
    NewPatient,
    Predictor,
    clinical_table,
    clinical_values,
    read_images,
)
from hecktor.inference.sources import Bundles
from hecktor.lesions import lesion_summary
from hecktor.tasks import TASKS, lineage
from hecktor.tasks.spec import MASK
from hecktor.tracking import fetch_bundle

IMAGES = ("CT", "PET")
# a segmenting task's columns: its mask in numbers, and where the mask was written
SEGMENTED = {"mask": "string", "GTVp_ml": "double", "GTVn_ml": "double", "GTVn_lesions": "long"}
_INTEGER = {"HPV_status"}  # other output columns are real numbers
# the file that makes this package's HecktorModel the MLflow model (models from code)
MODEL_CODE = '''"""hecktor's MLflow model: the installed package's HecktorModel."""
from mlflow.models import set_model

from hecktor.inference.pyfunc import HecktorModel

set_model(HecktorModel())
'''
_EXAMPLE_CLINICAL = {"Age": 61, "Gender": "M", "Tobacco Consumption": 1, "Alcohol Consumption": 0,
                     "Performance Status": 0, "M-stage": "M0"}  # fmt: skip


def output_columns(task: str) -> dict[str, str]:
    """The output row of a task's model (its lineage's outputs, as their specs declare them),
    with their types."""
    columns = {"PatientID": "string"}
    for name in lineage(task):
        for output in TASKS[name].outputs:
            added = (
                SEGMENTED
                if output == MASK
                else {output: "long" if output in _INTEGER else "double"}
            )
            columns |= added
    return columns


def signature(task: str) -> ModelSignature:
    """Inputs (images required, clinical columns optional and parsed as the official tables are),
    outputs, and the ``output_dir`` parameter (where masks go; empty: not written)."""
    inputs = [ColSpec("string", "PatientID"), *(ColSpec("string", c) for c in IMAGES)]
    inputs += [ColSpec(AnyType(), c, required=False) for c in CLINICAL_COLUMNS]
    outputs = [ColSpec(kind, name) for name, kind in output_columns(task).items()]  # type: ignore[arg-type]
    params = ParamSchema([ParamSpec("output_dir", "string", "")])
    return ModelSignature(Schema(inputs), Schema(outputs), params)  # type: ignore[arg-type]


def input_example(task: str) -> pd.DataFrame:
    """One patient as a client would send it (files on the predicting machine)."""
    row: dict[str, object] = {"PatientID": "CHUM-001", "CT": "/data/CHUM-001/CHUM-001__CT.nii.gz",
                              "PET": "/data/CHUM-001/CHUM-001__PT.nii.gz"}  # fmt: skip
    if lineage(task) != ("seg",):
        row |= _EXAMPLE_CLINICAL
    return pd.DataFrame([row])


def save_model(
    bundle: Bundle, out: Path, upstream: dict[str, str], requirements: list[str]
) -> Path:
    """Write ``bundle`` as an MLflow model folder ``out``; ``upstream`` maps each task it builds
    on to the registered version to chain (``models:/hecktor-seg/3``)."""
    missing = sorted(set(lineage(bundle.task)) - {bundle.task} - set(upstream))
    if missing:
        raise UserError(f"{bundle.root}: the {bundle.task} model needs registered {missing} models")
    digest = bundle.digest()  # checked when the model loads
    with io.scratch_dir("hecktor-model-") as tmp:
        code = tmp / "hecktor_model.py"
        code.write_text(MODEL_CODE)
        mlflow.pyfunc.save_model(
            str(out), python_model=str(code), artifacts={"bundle": str(bundle.root)},
            model_config={"task": bundle.task, "upstream": upstream, "device": "auto",
                          "bundle_digest": digest},
            signature=signature(bundle.task), input_example=input_example(bundle.task),
            pip_requirements=requirements, metadata={"hecktor_bundle": bundle.manifest["name"],
                                                     "bundle_digest": digest},
        )  # fmt: skip
    return out


class HecktorModel(PythonModel):
    """A task's model and the models it builds on, as one MLflow model (see the module's
    docstring). The networks load on the first prediction; a request whose patients cannot be
    read fails whole, naming each patient and file."""

    def load_context(self, context: PythonModelContext) -> None:
        config = dict(context.model_config or {})
        self.task = str(config["task"])
        # Task 1 alone reads no clinical values: no word about the columns a request leaves out
        self.reads_clinical = lineage(self.task) != ("seg",)
        self.device = str(config.get("device", "auto"))
        fetched = io.scratch("hecktor-upstream-")
        weakref.finalize(self, shutil.rmtree, fetched, True)
        mine = load_bundle(context.artifacts["bundle"])
        loaded = {self.task: mine.verify(config.get("bundle_digest"), "this model's configuration")}
        sources = {self.task: "this model"}
        for task, uri in dict(config.get("upstream", {})).items():
            try:
                found = fetch_bundle(uri, fetched / task, None)
            except MlflowException as err:
                raise UserError(f"{uri}: the {self.task} model builds on it, but it is not in the "
                                f"MLflow registry at {mlflow.get_tracking_uri()} ({err.message})") from None  # fmt: skip
            bundle = load_bundle(bundle_folder(found.path))
            loaded[task] = bundle.verify(found.tags.get("bundle_digest"), uri)
            sources[task] = uri
        self.bundles = Bundles({t: loaded[t] for t in lineage(self.task)}, sources)
        self.bundles.check()
        self._predictor: Predictor | None = None

    def predict(
        self,
        context: PythonModelContext,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        out = str((params or {}).get("output_dir") or "")
        try:
            patients = _patients(pd.DataFrame(model_input), clinical=self.reads_clinical)
        except InputError as err:
            raise MlflowException(str(err), INVALID_PARAMETER_VALUE) from None
        self._predictor = self._predictor or Predictor(self.bundles, self.device)
        if not out:
            return self._rows(patients, None)
        inputs = sorted({f.parent for p in patients for f in (p.ct, p.pet) if f is not None})
        try:
            # the folder is this model's own: never one holding its inputs or anyone else's files
            with io.owned_dir(out, locks.MODEL, inputs) as folder:
                return self._rows(patients, folder.resolve())
        except locks.LockedError as err:
            raise MlflowException(str(err), RESOURCE_CONFLICT) from None
        except (io.OutputError, io.WriteError) as err:
            raise MlflowException(str(err), INVALID_PARAMETER_VALUE) from None

    def _rows(self, patients: list[NewPatient], folder: Path | None) -> pd.DataFrame:
        """Each patient's output row; its mask written into ``folder`` (None: not written)."""
        assert self._predictor is not None
        rows = []
        for patient in patients:
            try:
                images = read_images(patient)
            except InputError as err:
                raise MlflowException(str(err), INVALID_PARAMETER_VALUE) from None
            prediction = self._predictor(images, patient.clinical)
            row = dict(prediction.row)
            if prediction.mask is not None:
                labels = sitk.GetArrayViewFromImage(prediction.mask)
                row |= lesion_summary(labels, float(np.prod(prediction.mask.GetSpacing())))
                row["mask"] = ""
                if folder is not None:
                    row["mask"] = str(folder / f"{patient.patient}.nii.gz")
                    io.write_image(row["mask"], prediction.mask)
            rows.append(row)
        return pd.DataFrame(rows, columns=list(output_columns(self.task)))


def _patients(frame: pd.DataFrame, clinical: bool = True) -> list[NewPatient]:
    """The request's patients; every problem of every row at once (:class:`InputError`). Absent
    clinical columns are logged when the models read ``clinical`` values."""
    request = Path("(request)")
    absent = [c for c in ("PatientID", *IMAGES) if c not in frame.columns]
    if absent:
        raise InputError([Problem("(all patients)", request, f"no column(s) {absent}")])
    table, problems = clinical_table(frame.drop(columns=list(IMAGES)), request, clinical)
    patients = []
    for row in frame.to_dict("records"):
        pid = str(row["PatientID"]).strip()
        files = {c: Path(str(row[c])) for c in IMAGES if isinstance(row[c], str) and row[c]}
        problems += [Problem(pid, files.get(c, request), f"{c} file not found")
                     for c in IMAGES if c not in files or not files[c].is_file()]  # fmt: skip
        patients.append(
            NewPatient(pid, files.get("CT"), files.get("PET"), clinical_values(table, pid))
        )
    if problems:
        raise InputError(problems)
    return patients
