"""Figures and tables for MLflow, DVC plots and the Markdown reports."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch
from sklearn.metrics import roc_curve

from hecktor import io, metrics
from hecktor.config import Config, read_tuned, tuned_difference, tuned_file

_LABEL_COLOURS = ListedColormap([(0, 0, 0, 0), (0.1, 0.8, 0.2, 0.85), (1.0, 0.85, 0.0, 0.85)])


def _label_legend(fig) -> None:
    """The label colours' key, under the panels."""
    fig.legend(handles=[Patch(color=_LABEL_COLOURS(1), label="GTVp"),
                        Patch(color=_LABEL_COLOURS(2), label="GTVn")],
               loc="lower center", ncol=2, fontsize=8, frameon=False)  # fmt: skip


def label_mip(labels: np.ndarray, axis: int = 1) -> np.ndarray:
    """Label MIP that shows GTVp over GTVn where both project onto one pixel."""
    gtvn = (labels == 2).any(axis=axis) * 2
    gtvp = (labels == 1).any(axis=axis)
    return np.where(gtvp, 1, gtvn)


def spread(values: dict[str, float], count: int) -> list[tuple[str, str]]:
    """``count`` keys from the highest value to the lowest, evenly apart (3: best, median, worst),
    each with its place; keys whose value is undefined are left out."""
    ranked = sorted((k for k, v in values.items() if v == v), key=lambda k: (-values[k], k))
    if not ranked or count <= 0:
        return []
    spaced = np.linspace(0, len(ranked) - 1, min(count, len(ranked)))
    picks = sorted({int(np.floor(i + 0.5)) for i in spaced})  # halves up: the upper median
    names = {len(ranked) // 2: "median", len(ranked) - 1: "worst", 0: "best"}
    return [(ranked[i], names.get(i, f"rank {i + 1} of {len(ranked)}")) for i in picks]


def mip_figure(cases: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray]]):
    """The paper's Fig. 1: coronal MIPs of PET, prediction and truth, one row per case; the PET
    in the release's units (SUV where the release is in SUV) shown as the paper's: centre 3,
    window 7.

    Each case is (title, PET MIP, prediction label MIP, truth label MIP), the MIPs along y
    (:func:`label_mip` for the labels). GTVp green, GTVn yellow.
    """
    rows = max(len(cases), 1)
    fig, axes = plt.subplots(rows, 3, figsize=(7.5, 2.6 * rows + 0.4), squeeze=False)
    for row, (title, pet_mip, pred, truth) in enumerate(cases):
        for col, (what, labels) in enumerate(
            (("PET", None), ("prediction", pred), ("truth", truth))
        ):
            ax = axes[row, col]
            ax.imshow(pet_mip, cmap="gray_r", origin="lower", vmin=-0.5, vmax=6.5)
            if labels is not None:
                ax.imshow(labels, cmap=_LABEL_COLOURS, origin="lower", vmin=0, vmax=2,
                          interpolation="nearest")  # fmt: skip
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{title}: {what}" if col == 0 else what, fontsize=8)
    _label_legend(fig)
    fig.tight_layout(rect=(0, 0.4 / (2.6 * rows + 0.4), 1, 1))
    return fig


def qc_figure(title: str, image: np.ndarray, pet_scale: tuple[float, float],
              labels: np.ndarray | None, notes: str):  # fmt: skip
    """One patient at a glance: coronal MIPs of the CT and of the PET (restored to the release's
    units by ``pet_scale``, the z-score's mean and spread, shown as Fig. 1), with the outlines of
    the predicted GTVp (green) and GTVn (yellow) and ``notes`` (the other tasks' predictions)."""
    mean, std = pet_scale
    fig, axes = plt.subplots(1, 2, figsize=(7, 4.4))
    shown = ((axes[0], "CT", image[0].max(axis=1), "gray", None, None),
             (axes[1], "PET", (image[1] * std + mean).max(axis=1), "gray_r", -0.5, 6.5))  # fmt: skip
    for ax, name, mip, cmap, low, high in shown:
        ax.imshow(mip, cmap=cmap, origin="lower", vmin=low, vmax=high)
        if labels is not None:
            outline = label_mip(labels)
            for value in (1, 2):
                if (outline == value).any():
                    ax.contour(outline == value, levels=[0.5], colors=[_LABEL_COLOURS(value)],
                               linewidths=1.2, origin="lower")  # fmt: skip
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    _label_legend(fig)
    fig.suptitle(f"{title}\n{notes}", fontsize=9)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


def roc_figure(curves: dict[str, tuple[np.ndarray, np.ndarray]]):
    """ROC curves, each labelled with its AUC: ``curves`` maps a label to (truth 0/1, score)."""
    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    for label, (truth, score) in curves.items():
        truth, score = np.asarray(truth, int), np.asarray(score, float)
        if len(set(truth.tolist())) < 2:
            continue  # one class only: no curve
        fpr, tpr, _ = roc_curve(truth, score)
        ax.plot(fpr, tpr, label=f"{label} (AUC {metrics.auc(truth, score):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def confusion_figure(matrices: dict[str, dict[str, int]]):
    """2 x 2 confusion matrices side by side, counts in the cells: ``matrices`` maps a title to
    ``true_positive``, ``false_negative``, ``false_positive``, ``true_negative``."""
    fig, axes = plt.subplots(1, max(len(matrices), 1), figsize=(3.2 * max(len(matrices), 1), 3),
                             squeeze=False)  # fmt: skip
    for ax, (title, m) in zip(axes[0], matrices.items(), strict=False):
        cells = np.array([[m["true_negative"], m["false_positive"]],
                          [m["false_negative"], m["true_positive"]]])  # fmt: skip
        ax.imshow(cells, cmap="Blues", vmin=0)
        for (i, j), count in np.ndenumerate(cells):
            ax.text(j, i, str(count), ha="center", va="center",
                    color="white" if count > cells.max() / 2 else "black")  # fmt: skip
        ax.set_xticks([0, 1], ["predicted -", "predicted +"], fontsize=8)
        ax.set_yticks([0, 1], ["HPV -", "HPV +"], fontsize=8)
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def curves_figure(history: pd.DataFrame, columns: Sequence[str], title: str):
    """Training curves, one line per fold (``history``: the columns ``fold``, ``epoch`` and
    ``columns``; rows without a value, such as epochs without validation, are skipped)."""
    fig, axes = plt.subplots(1, len(columns), figsize=(3.6 * len(columns), 3), squeeze=False)
    for ax, column in zip(axes[0], columns, strict=True):
        for fold, rows in history.groupby("fold", sort=False):
            rows = rows.dropna(subset=[column])
            ax.plot(rows["epoch"], rows[column], marker="." if len(rows) < 20 else None,
                    label=str(fold))  # fmt: skip
        ax.set_xlabel("epoch")
        ax.set_title(column, fontsize=9)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def save_figure(figure, path: Path | str) -> Path:
    """Write a figure as PNG atomically (a reader never sees half a file) and close it."""
    with io.atomic_path(Path(path)) as tmp:
        figure.savefig(tmp, dpi=90, format="png")
    plt.close(figure)
    return Path(path)


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


def summary(metrics: dict[str, dict | None]) -> dict[str, dict]:
    """The headline figures of every task, network beside baseline: the pipeline's one DVC metric
    (``metrics/summary.json``), so that ``dvc metrics show`` and ``dvc exp show`` stay short."""
    return {
        task: {row["figure"]: {"network": row["network"], "baseline": row["baseline"]}
               for row in result.get("headline", [])}
        for task, result in metrics.items() if result
    }  # fmt: skip


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
    and figures into ``reports/index.md``, and the headline figures into
    ``metrics/summary.json``; ``titles`` names the tasks, in report order."""

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
    curves = {}
    for task, title in titles.items():
        history = Path(cfg.paths.plots) / task / "history.csv"
        if history.is_file():
            frame = pd.read_csv(history)
            columns = curve_columns(list(frame.columns))
            figure = curves_figure(frame, columns, f"{title}: training")
            curves[task] = save_figure(figure, history.with_name("curves.png"))
    out = reports_dir / "index.md"
    io.write_json(metrics_dir / "summary.json", summary(metrics))
    text = pipeline_report(metrics, sections, tuned, titles)
    if curves:
        text += (
            "\n## Training curves\n\n"
            + "\n".join(
                f"![{titles[t]}: training curves]({os.path.relpath(path, reports_dir)})"
                for t, path in curves.items()
            )
            + "\n"
        )
    io.write_text(out, text)
    return out


def curve_columns(columns: list[str]) -> list[str]:
    """What a training history's figure shows: the loss and the validation metrics (the
    selection score only where it is the one validation figure)."""
    validation = [c for c in columns if c.startswith("val_")]
    if len(validation) > 1:
        validation = [c for c in validation if c != "val_score"]
    return [c for c in ("train_loss", *validation) if c in columns]
