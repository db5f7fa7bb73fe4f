"""Clinical variables as network and baseline inputs, encoded the paper's way.

Unknown values become -1; age is z-scored with the training fold's mean and standard deviation only
(never the validation or test patients'). Binary variables are 0/1; ``M-stage`` is 0 (M0) or 1 (M1),
with Mx counted as unknown; ``Treatment`` is one 0/1 column per treatment seen in training. The
fitted encoder is a plain dict, stored beside the model weights, so inference encodes new patients
exactly as training did.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

UNKNOWN = -1.0
HPV_VARIABLES = ("Age", "Gender", "Tobacco Consumption", "Alcohol Consumption")
RFS_VARIABLES = (
    "HPV Status", "Tobacco Consumption", "Alcohol Consumption", "Age", "Gender",
    "Performance Status", "Treatment", "M-stage",
)  # fmt: skip


def _known(value: object) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


class ClinicalEncoder:
    """Fit on training patients, then turn clinical rows into float32 vectors."""

    def __init__(self, variables: Sequence[str], age_mean: float = 60.0, age_std: float = 10.0,
                 treatments: Sequence[str] = ()) -> None:  # fmt: skip
        self.variables = tuple(variables)
        self.age_mean = float(age_mean)
        self.age_std = float(age_std)
        self.treatments = tuple(treatments)

    @classmethod
    def fit(cls, variables: Sequence[str], frame: pd.DataFrame) -> ClinicalEncoder:
        ages = pd.to_numeric(frame.get("Age", pd.Series(dtype=float)), errors="coerce").dropna()
        std = float(ages.std()) if len(ages) > 1 and ages.std() > 0 else 10.0
        mean = float(ages.mean()) if len(ages) else 60.0
        treatments = ()
        if "Treatment" in variables and "Treatment" in frame:
            treatments = tuple(sorted({str(t) for t in frame["Treatment"] if _known(t)}))
        return cls(variables, mean, std, treatments)

    @property
    def columns(self) -> list[str]:
        """Names of the encoded columns, in order."""
        out = []
        for variable in self.variables:
            if variable == "Treatment":
                out += [f"Treatment={t}" for t in self.treatments]
            else:
                out.append(variable)
        return out

    @property
    def width(self) -> int:
        return len(self.columns)

    def _encode(self, variable: str, value: object) -> list[float]:
        if variable == "Treatment":
            if not _known(value):
                return [UNKNOWN] * len(self.treatments)
            return [1.0 if str(value) == t else 0.0 for t in self.treatments]
        if not _known(value):
            return [UNKNOWN]
        if variable == "Age":
            return [(float(value) - self.age_mean) / self.age_std]
        if variable == "M-stage":
            return [{"M0": 0.0, "M1": 1.0}.get(str(value), UNKNOWN)]
        return [float(value)]

    def transform(self, frame: pd.DataFrame, unknown: Iterable[str] = ()) -> np.ndarray:
        """(patients, width) float32; variables named in ``unknown`` are set to unknown (ablation)."""
        masked = set(unknown)
        rows = []
        for _, row in frame.iterrows():
            values: list[float] = []
            for variable in self.variables:
                value = None if variable in masked else row.get(variable)
                values += self._encode(variable, value)
            rows.append(values)
        return np.asarray(rows, dtype=np.float32).reshape(len(rows), self.width)

    def to_dict(self) -> dict:
        return {"variables": list(self.variables), "age_mean": self.age_mean, "age_std": self.age_std,
                "treatments": list(self.treatments)}  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict) -> ClinicalEncoder:
        return cls(data["variables"], data["age_mean"], data["age_std"], data.get("treatments", ()))


def read_clinical(prepared) -> pd.DataFrame:
    """The prepared clinical table, indexed by patient."""
    return pd.read_csv(Path(prepared) / "clinical.csv").set_index("PatientID")
