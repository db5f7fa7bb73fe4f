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
from sklearn.metrics import roc_curve

from hecktor import comparison, io, metrics
from hecktor.config import Config, read_tuned, tuned_difference, tuned_file
from hecktor.figures import save_figure


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


def headline_row(figure: str, compared: dict, oracle: float | None) -> dict:
    """One row of a task's ``headline`` (in its metrics JSON): a figure of the network and of its
    baseline on the same patients with their intervals (:func:`hecktor.comparison.compare`), the
    oracle's (synthetic cohorts only), and what the intervals allow one to say."""
    return {"figure": figure, "network": compared["network"], "network_ci": compared["network_ci"],
            "baseline": compared["baseline"], "baseline_ci": compared["baseline_ci"],
            "difference_ci": compared["difference_ci"], "oracle": oracle,
            "verdict": compared["verdict"]}  # fmt: skip


COMPARISON_COLUMNS = ("network", "baseline", "difference", "verdict")


def comparison_cells(compared: dict) -> dict[str, str]:
    """A comparison's printed cells: each figure with its interval, and the verdict."""
    return {
        "network": comparison.interval_text(compared["network"], compared.get("network_ci")),
        "baseline": comparison.interval_text(compared["baseline"], compared.get("baseline_ci")),
        "difference": comparison.interval_text(
            _difference(compared), compared.get("difference_ci")
        ),
        "verdict": compared.get("verdict", "n/a"),
    }


def headline_rows(metrics: dict[str, dict | None], titles: dict[str, str]) -> list[dict]:
    """Every task's headline rows, titled and ready to print (figures with their intervals), in
    the order of ``titles``."""
    rows: list[dict] = []
    for task, title in titles.items():
        result = metrics.get(task)
        for row in (result or {}).get("headline", []):
            rows.append(
                {
                    "task": title,
                    "figure": row["figure"],
                    **comparison_cells(row),
                    "oracle": comparison.interval_text(row.get("oracle"), None),
                }
            )
    return rows


def _difference(row: dict) -> float:
    network, baseline = row.get("network"), row.get("baseline")
    if network is None or baseline is None:
        return float("nan")
    return network - baseline


def summary(metrics: dict[str, dict | None]) -> dict[str, dict]:
    """The headline figures of every task, network beside baseline: the pipeline's one DVC metric
    (``metrics/summary.json``), so that ``dvc metrics show`` and ``dvc exp show`` stay short."""
    return {
        task: {row["figure"]: {"network": row["network"], "baseline": row["baseline"],
                               "verdict": row.get("verdict", "n/a")}
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
        "same patients and folds. In brackets: 95 % bootstrap intervals over patients, the same",
        "resamples for both models; a model is called ahead only when the interval of the",
        "difference (network minus baseline) excludes zero.",
        "",
        markdown_table(
            headline_rows(metrics, titles),
            ["task", "figure", "network", "baseline", "difference", "oracle", "verdict"],
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
