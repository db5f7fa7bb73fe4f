"""The registered models are MLflow models: pyfunc loading, REST serving, weights stored once."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import mlflow
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from hecktor import tracking
from hecktor.data import layout
from hecktor.inference.batch import predict_folder
from hecktor.inference.pyfunc import output_columns
from hecktor.inference.sources import load_bundles
from hecktor.tasks import TASKS, lineage
from hecktor.tasks.spec import MASK
from tests.inference.conftest import register_all

pytestmark = pytest.mark.slow


def _requests(release_dir, patients: list[str], clinical: bool = True) -> pd.DataFrame:
    """The request a client sends for ``patients`` of the release: files and clinical rows."""
    tables = layout.read_tables(layout.scan_release(release_dir), [])
    values = layout.clinical_frame(tables).set_index("PatientID") if clinical else None
    rows = []
    for pid in patients:
        folder = release_dir / "Task 1" / pid
        row = {"PatientID": pid, "CT": str(folder / f"{pid}__CT.nii.gz"),
               "PET": str(folder / f"{pid}__PT.nii.gz")}  # fmt: skip
        if values is not None:
            row |= {k: (None if v != v else v) for k, v in values.loc[pid].items()
                    if k in ("Age", "Gender", "Tobacco Consumption", "Alcohol Consumption",
                             "Performance Status", "M-stage", "Treatment")}  # fmt: skip
        rows.append(row)
    return pd.DataFrame(rows)


def test_a_registered_model_is_an_mlflow_model_that_predicts_as_hecktor_predict(
    bundle_dir, store, release_dir, tmp_path
):
    registered = register_all(bundle_dir, store)
    assert registered["rfs"]["uri"] == "models:/hecktor-rfs/1"
    client = MlflowClient(tracking.tracking_uri(store))
    version = client.get_model_version("hecktor-rfs", "1")
    assert (
        version.source.startswith("models:/m-") and version.run_id
    )  # a logged model, with its run
    # chained to the upstream versions registered with it; each weights file stored once
    info = mlflow.models.get_model_info("models:/hecktor-rfs@champion")
    assert info.signature.inputs.input_names()[:3] == ["PatientID", "CT", "PET"]
    assert info.signature.outputs.input_names() == [
        "PatientID", "mask", "GTVp_ml", "GTVn_ml", "GTVn_lesions", "HPV_probability", "HPV_status",
        "RFS_risk",
    ]  # fmt: skip
    assert info.saved_input_example_info["type"] == "dataframe"
    stored = sorted(p.name for p in (store / "artifacts").rglob("*.pt"))
    bundled = sorted(p.name for name in ("hecktor-seg", "hecktor-hpv", "hecktor-rfs")
                     for p in (bundle_dir / name).glob("*.pt"))  # fmt: skip
    assert stored == bundled

    patients = sorted(p.name for p in (release_dir / "Task 1").iterdir() if p.is_dir())[:2]
    model = mlflow.pyfunc.load_model("models:/hecktor-rfs@champion")
    answer = model.predict(_requests(release_dir, patients),
                           params={"output_dir": str(tmp_path / "masks")})  # fmt: skip
    assert list(answer["PatientID"]) == patients

    # the same patients through `hecktor predict` with the same registered models
    bundles = load_bundles(store, tmp_path / "cache")
    expected = predict_folder(bundles, release_dir, tmp_path / "predict")
    assert expected["failed"] == []
    csv = pd.read_csv(tmp_path / "predict" / "predictions.csv").set_index("PatientID")
    for _, row in answer.iterrows():
        pid = row["PatientID"]
        for column in ("HPV_probability", "HPV_status", "RFS_risk"):
            assert row[column] == pytest.approx(csv.loc[pid, column], abs=1e-5), column
        ours = sitk.GetArrayFromImage(sitk.ReadImage(row["mask"]))
        theirs = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "predict" / f"{pid}.nii.gz")))
        np.testing.assert_array_equal(ours, theirs)
        spacing = sitk.ReadImage(row["mask"]).GetSpacing()
        assert row["GTVp_ml"] == pytest.approx((ours == 1).sum() * np.prod(spacing) / 1000)


def test_a_request_with_unreadable_patients_fails_whole_naming_each(bundle_dir, store, release_dir,
                                                                     tmp_path):  # fmt: skip
    register_all(bundle_dir, store)
    model = mlflow.pyfunc.load_model("models:/hecktor-hpv@champion")
    patients = sorted(p.name for p in (release_dir / "Task 1").iterdir() if p.is_dir())[:2]
    request = _requests(release_dir, patients)
    request.loc[0, "PET"] = str(tmp_path / "missing.nii.gz")
    request["Age"] = request["Age"].astype(object)
    request.loc[1, "Age"] = "old"
    with pytest.raises(MlflowException) as raised:
        model.predict(request, params={"output_dir": str(tmp_path / "out")})
    message = str(raised.value)
    assert f"{patients[0]}: {tmp_path / 'missing.nii.gz'}: PET file not found" in message
    assert f"{patients[1]}: (request): column 'Age': unreadable value 'old'" in message
    assert not (tmp_path / "out").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_mlflow_models_serve_answers_a_rest_request(bundle_dir, store, release_dir, tmp_path):
    register_all(bundle_dir, store)
    port = _free_port()
    env = os.environ | {tracking.ENV: tracking.tracking_uri(store)}
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/hecktor-seg@champion",
         "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(server.stdout.read() if server.stdout else "") from None
                time.sleep(0.5)
        patient = sorted(p.name for p in (release_dir / "Task 1").iterdir() if p.is_dir())[0]
        records = _requests(release_dir, [patient], clinical=False).to_dict("records")
        status, body = _post(f"http://127.0.0.1:{port}/invocations",
                             {"dataframe_records": records,
                              "params": {"output_dir": str(tmp_path / "served")}})  # fmt: skip
        assert status == 200, body
        (row,) = body["predictions"]
        assert row["PatientID"] == patient and row["mask"] == str(
            tmp_path / "served" / f"{patient}.nii.gz"
        )
        mask = sitk.ReadImage(row["mask"])
        voxel_ml = np.prod(mask.GetSpacing()) / 1000
        labels = sitk.GetArrayFromImage(mask)
        assert row["GTVn_ml"] == pytest.approx((labels == 2).sum() * voxel_ml)
        assert row["GTVp_ml"] == pytest.approx((labels == 1).sum() * voxel_ml)
        status, body = _post(f"http://127.0.0.1:{port}/invocations",
                             {"dataframe_records": records,
                              "params": {"output_dir": str(release_dir / "Task 1" / patient)}})  # fmt: skip
        assert status == 400 and "is the input" in body["message"], body
        records[0]["CT"] = str(tmp_path / "nowhere.nii.gz")
        status, body = _post(f"http://127.0.0.1:{port}/invocations", {"dataframe_records": records})
        assert status == 400 and "CT file not found" in body["message"], body
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_every_task_declares_its_output_columns():
    for task in TASKS:
        declared = {k for t in lineage(task) for k in TASKS[t].outputs if k != MASK}
        assert declared <= set(output_columns(task)), task


def test_only_models_that_read_clinical_values_mention_the_columns_left_out(
    bundle_dir, store, release_dir, tmp_path, caplog
):
    register_all(bundle_dir, store)
    patient = sorted(p.name for p in (release_dir / "Task 1").iterdir() if p.is_dir())[0]
    request = _requests(release_dir, [patient], clinical=False)
    with caplog.at_level(logging.WARNING):
        mlflow.pyfunc.load_model("models:/hecktor-seg@champion").predict(request)
    assert "unknown for every patient" not in caplog.text
    with caplog.at_level(logging.WARNING):
        mlflow.pyfunc.load_model("models:/hecktor-hpv@champion").predict(request)
    assert "no column(s) ['Age', 'Gender'" in caplog.text


def test_a_registered_model_never_writes_into_its_inputs_or_a_foreign_folder(
    bundle_dir, store, release_dir, tmp_path
):
    """``output_dir`` holding the patient's own files (the release, with its label) is refused
    (HTTP 400 when served), as is a folder holding anything this model did not write."""
    register_all(bundle_dir, store)
    model = mlflow.pyfunc.load_model("models:/hecktor-seg@champion")
    pid = sorted(p.name for p in (release_dir / "Task 1").iterdir() if p.is_dir())[0]
    patient = tmp_path / "release" / pid
    shutil.copytree(release_dir / "Task 1" / pid, patient)
    request = _requests(release_dir, [pid], clinical=False)
    request["CT"] = str(patient / f"{pid}__CT.nii.gz")
    request["PET"] = str(patient / f"{pid}__PT.nii.gz")
    before = {p.name: p.read_bytes() for p in patient.iterdir()}
    foreign = tmp_path / "results"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    for out, why in ((patient, "is the input"), (patient.parent, "contains the input"),
                     (foreign, "not written by hecktor")):  # fmt: skip
        with pytest.raises(MlflowException, match=why) as raised:
            model.predict(request, params={"output_dir": str(out)})
        assert raised.value.get_http_status_code() == 400
    assert {p.name: p.read_bytes() for p in patient.iterdir()} == before  # the label included
    assert (foreign / "notes.txt").read_text() == "mine"
    masks = tmp_path / "masks"
    for _ in range(2):  # its own folder: written, and written again
        answer = model.predict(request, params={"output_dir": str(masks)})
        assert answer["mask"][0] == str(masks.resolve() / f"{pid}.nii.gz")
    assert sorted(p.name for p in masks.iterdir()) == [".hecktor-output", f"{pid}.nii.gz"]
