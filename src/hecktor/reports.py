"""Figures and tables for MLflow, DVC plots and the Markdown reports."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import ListedColormap

from hecktor import io
from hecktor.config import Config, read_tuned, tuned_difference, tuned_file

_LABEL_COLOURS = ListedColormap([(0, 0, 0, 0), (0.1, 0.8, 0.2, 0.85), (1.0, 0.85, 0.0, 0.85)])


def _mip(labels: np.ndarray, axis: int) -> np.ndarray:
    """Label MIP that shows GTVp over GTVn where both project onto one pixel."""
    gtvn = (labels == 2).any(axis=axis) * 2
    gtvp = (labels == 1).any(axis=axis)
    return np.where(gtvp, 1, gtvn)


def mip_figure(cases: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray]]):
    """The paper's Fig. 1: coronal MIPs of PET, prediction and truth, one row per case; the PET
    in the release's units (SUV where the release is in SUV) shown as the paper's: centre 3,
    window 7.

    Each case is (patient, pet (Z, Y, X), prediction, truth). GTVp green, GTVn yellow.
    """
    rows = max(len(cases), 1)
    fig, axes = plt.subplots(rows, 3, figsize=(7.5, 2.6 * rows), squeeze=False)
    for row, (patient, pet, pred, truth) in enumerate(cases):
        pet_mip = pet.max(axis=1)
        for col, (title, labels) in enumerate(
            (("PET", None), ("prediction", pred), ("truth", truth))
        ):
            ax = axes[row, col]
            ax.imshow(pet_mip, cmap="gray_r", origin="lower", vmin=-0.5, vmax=6.5)
            if labels is not None:
                ax.imshow(
                    _mip(labels, 1),
                    cmap=_LABEL_COLOURS,
                    origin="lower",
                    vmin=0,
                    vmax=2,
                    interpolation="nearest",
                )
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{patient}: {title}" if col == 0 else title, fontsize=8)
    fig.tight_layout()
    return fig


def markdown_table(rows: Sequence[dict], columns: Sequence[str], digits: int = 3) -> str:
    """A Markdown table; floats rounded to ``digits``."""

    def cell(value) -> str:
        if value is None:
            return "n/a"
        if isinstance(value, float):
            return "n/a" if value != value else f"{value:.{digits}f}"
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------- the pipeline report


def headline_row(
    figure: str, network: float | None, baseline: float | None, oracle: float | None, winner: str
) -> dict:
    """One row of a task's ``headline`` (in its metrics JSON): a figure of the network, of its
    baseline on the same patients and of the oracle (synthetic cohorts only), and which wins."""
    return {"figure": figure, "network": network, "baseline": baseline, "oracle": oracle,
            "winner": winner}  # fmt: skip


def headline_rows(metrics: dict[str, dict | None], titles: dict[str, str]) -> list[dict]:
    """Every task's headline rows, titled, in the order of ``titles``."""
    rows: list[dict] = []
    for task, title in titles.items():
        result = metrics.get(task)
        if result:
            nan = float("nan")
            rows += [{"task": title, **{k: nan if v is None else v for k, v in row.items()}}
                     for row in result.get("headline", [])]  # fmt: skip
    return rows


def _demote(markdown: str) -> str:
    """Headings one level down, so a task's report nests under the pipeline report."""
    return "\n".join(f"#{line}" if line.startswith("#") else line for line in markdown.splitlines())


def pipeline_report(
    metrics: dict[str, dict | None],
    sections: dict[str, str],
    tuned: dict[str, dict | None],
    titles: dict[str, str],
) -> str:
    """The one page: headline table, tuned values, then every task's own report (with figures)."""
    lines = [
        "# hecktor: pipeline report",
        "",
        "Every task's network beside its simple baseline (PET threshold for Task 1, clinical",
        "logistic regression for Task 3, clinical Cox models for Task 2; the better Cox model is",
        "shown) and the oracle where the data have one (synthetic cohorts only). Baselines run on the",
        "same patients and folds.",
        "",
        markdown_table(
            headline_rows(metrics, titles),
            ["task", "figure", "network", "baseline", "oracle", "winner"],
        ),
        "",
        "## Tuned hyperparameters",
        "",
    ]
    tuned_rows = [
        {"task": task, "study": t.get("study") or f"(not tuned: {t.get('why', 'no study')})",
         "trial": t.get("trial", ""),
         "value": t.get("value", float("nan")), "values": ", ".join(
             f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
             for k, v in (t.get("values") or {}).items())}
        for task, t in tuned.items() if t is not None
    ]  # fmt: skip
    lines += [markdown_table(tuned_rows, ["task", "study", "trial", "value", "values"]), ""]
    for text in sections.values():
        lines += [_demote(text).strip(), ""]
    return "\n".join(lines).rstrip() + "\n"


def write_pipeline_report(cfg: Config, titles: dict[str, str]) -> Path:
    """Gather ``metrics/``, ``tuned/``, the task reports (``<task>.md``, then ``<task>_*.md``)
    and figures into ``reports/index.md``; ``titles`` names the tasks, in report order."""

    def load(path: Path) -> dict | None:
        return json.loads(path.read_text()) if path.is_file() else None

    metrics_dir, reports_dir = Path(cfg.paths.metrics), Path(cfg.paths.reports)
    metrics = {t: load(metrics_dir / f"{t}.json") for t in titles}
    pages = [
        p for t in titles for p in (reports_dir / f"{t}.md", *sorted(reports_dir.glob(f"{t}_*.md")))
    ]
    sections = {p.stem: p.read_text() for p in pages if p.is_file()}
    tuned = {t: read_tuned(cfg, t) for t in titles}
    for task, record in tuned.items():  # only what applies to this configuration is reported
        difference = record and tuned_difference(cfg, task, record)
        if difference:
            tuned[task] = {
                "study": None,
                "why": f"{tuned_file(cfg, task)} not applied, {difference}",
            }
    out = reports_dir / "index.md"
    io.write_text(out, pipeline_report(metrics, sections, tuned, titles))
    return out
