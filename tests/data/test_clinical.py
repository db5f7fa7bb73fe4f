import numpy as np
import pandas as pd
import pytest

from hecktor.data.clinical import (
    HPV_VARIABLES,
    RFS_VARIABLES,
    UNKNOWN,
    ClinicalEncoder,
    read_clinical,
)


def _frame():
    return pd.DataFrame(
        {
            "Age": [50.0, 70.0, np.nan],
            "Gender": [1.0, 0.0, 1.0],
            "Tobacco Consumption": [1.0, np.nan, 0.0],
            "Alcohol Consumption": [np.nan, 1.0, 0.0],
            "Performance Status": [0.0, 2.0, np.nan],
            "Treatment": ["Radiotherapy", "Chemoradiotherapy", np.nan],
            "M-stage": ["M0", "M1", "Mx"],
            "HPV Status": [1.0, 0.0, np.nan],
        },
        index=["A-1", "A-2", "A-3"],
    )


def test_hpv_encoding_unknown_is_minus_one_and_age_uses_training_stats():
    frame = _frame()
    encoder = ClinicalEncoder.fit(HPV_VARIABLES, frame.iloc[:2])  # training fold: ages 50 and 70
    assert encoder.age_mean == 60.0 and encoder.age_std == pytest.approx(np.std([50, 70], ddof=1))
    x = encoder.transform(frame)
    assert x.dtype == np.float32 and x.shape == (3, 4)
    np.testing.assert_allclose(
        x[:, 0], [-10 / encoder.age_std, 10 / encoder.age_std, UNKNOWN], rtol=1e-6
    )
    np.testing.assert_array_equal(x[:, 1], [1, 0, 1])
    np.testing.assert_array_equal(x[:, 2], [1, UNKNOWN, 0])
    np.testing.assert_array_equal(x[:, 3], [UNKNOWN, 1, 0])


def test_validation_patients_do_not_change_the_encoding():
    frame = _frame()
    a = ClinicalEncoder.fit(HPV_VARIABLES, frame.iloc[:2]).transform(frame.iloc[:2])
    extra = pd.concat([frame.iloc[:2], pd.DataFrame({"Age": [99.0]}, index=["B-1"])])
    b = ClinicalEncoder.fit(HPV_VARIABLES, frame.iloc[:2]).transform(extra.iloc[:2])
    np.testing.assert_array_equal(a, b)


def test_rfs_encoding_with_treatment_and_m_stage():
    encoder = ClinicalEncoder.fit(RFS_VARIABLES, _frame())
    assert encoder.treatments == ("Chemoradiotherapy", "Radiotherapy")
    columns = encoder.columns
    x = encoder.transform(_frame())
    assert x.shape == (3, len(columns)) == (3, 9)
    m = columns.index("M-stage")
    np.testing.assert_array_equal(x[:, m], [0, 1, UNKNOWN])  # Mx is unknown
    t = columns.index("Treatment=Radiotherapy")
    np.testing.assert_array_equal(x[:, t], [1, 0, UNKNOWN])


def test_ablation_masks_variables():
    encoder = ClinicalEncoder.fit(HPV_VARIABLES, _frame())
    x = encoder.transform(_frame(), unknown=("Age", "Gender"))
    assert (x[:, :2] == UNKNOWN).all()
    np.testing.assert_array_equal(x[:, 2:], encoder.transform(_frame())[:, 2:])


def test_round_trip():
    encoder = ClinicalEncoder.fit(RFS_VARIABLES, _frame())
    again = ClinicalEncoder.from_dict(encoder.to_dict())
    np.testing.assert_array_equal(again.transform(_frame()), encoder.transform(_frame()))


# --------------------------------------------------------------------------- found by mutation


def test_age_statistics_fall_back_where_the_training_patients_give_none():
    one = ClinicalEncoder.fit(HPV_VARIABLES, pd.DataFrame({"Age": [64.0, np.nan]}))
    assert (one.age_mean, one.age_std) == (64.0, 10.0)  # one age: no spread, the default's
    same = ClinicalEncoder.fit(HPV_VARIABLES, pd.DataFrame({"Age": [64.0, 64.0]}))
    assert same.age_std == 10.0
    close = ClinicalEncoder.fit(HPV_VARIABLES, pd.DataFrame({"Age": [64.0, 65.0]}))
    assert close.age_std == pytest.approx(np.std([64.0, 65.0], ddof=1))  # under one year: kept
    unknown = ClinicalEncoder.fit(HPV_VARIABLES, pd.DataFrame({"Age": ["n/a", None]}))
    assert (unknown.age_mean, unknown.age_std) == (60.0, 10.0)
    absent = ClinicalEncoder.fit(HPV_VARIABLES, pd.DataFrame({"Gender": [1.0]}))
    assert (absent.age_mean, absent.age_std) == (60.0, 10.0)
    assert ClinicalEncoder(HPV_VARIABLES).transform(pd.DataFrame({"Age": [70.0]}))[0, 0] == 1.0


def test_treatments_are_fitted_only_when_treatment_is_a_variable():
    assert ClinicalEncoder.fit(HPV_VARIABLES, _frame()).treatments == ()
    assert ClinicalEncoder.fit(RFS_VARIABLES, _frame()).treatments == (
        "Chemoradiotherapy", "Radiotherapy")  # fmt: skip
    old = ClinicalEncoder.fit(HPV_VARIABLES, _frame()).to_dict()
    del old["treatments"]  # an encoder saved before treatments were recorded
    assert ClinicalEncoder.from_dict(old).treatments == ()


def test_the_prepared_clinical_table_is_indexed_by_patient(prepared_dir):
    table = read_clinical(prepared_dir)
    assert table.index.name == "PatientID"
    assert sorted(table.index) == sorted(p.name for p in prepared_dir.iterdir() if p.is_dir())
