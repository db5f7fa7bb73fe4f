"""Task 3 scored on unseen patients: folds, fold ensemble, clinical baseline, oracle, ablation.

* Cross-validation: each fold model classifies its validation patients (out of fold); per-fold and
  pooled balanced accuracy and AUC, per centre too.
* Test: the patients no fold trained on. The fold ensemble (mean logit) and the best single fold
  (highest cross-validated balanced accuracy, the paper's pick) are scored side by side.
* Baseline: logistic regression on the same clinical encoding, trained on the same folds, ensembled
  and picked the same way. Leave-one-centre-out results come beside the k-fold ones.
* Oracle (synthetic cohorts): the true HPV probability, thresholded at the training prevalence, the
  decision that maximises balanced accuracy: the best any model could do on these patients.

Every decision is ``logit > 0`` (see :class:`hecktor.tasks.hpv.HPVTask`); the logistic
regression is fitted with balanced class weights, so its 0 is the same balanced cut.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_curve

from hecktor import comparison, figures, io, metrics, reports, tracking
from hecktor.config import Config
from hecktor.data.clinical import HPV_VARIABLES, ClinicalEncoder
from hecktor.data.folds import folds_of, load_splits
from hecktor.data.splits import fold_predictions, pooled_values
from hecktor.derive import load_models, logits_of
from hecktor.tasks import task_folds
from hecktor.tasks.hpv import HPVTask

log = logging.getLogger(__name__)


def _scores(truth: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    truth = truth.astype(int)
    return {
        "balanced_accuracy": metrics.balanced_accuracy(truth, (logits > 0).astype(int)),
        "auc": metrics.auc(truth, logits),
        "n": len(truth),
        "n_negative": int((truth == 0).sum()),
    }


def _fit_baseline(task: HPVTask, train_ids: list[str]):
    """Logistic regression (balanced class weights) on the fold's clinical encoding.

    Returns a function from patients (and variables to mask) to logits; a fold whose training
    patients hold one class only predicts that class.
    """
    encoder = ClinicalEncoder.fit(HPV_VARIABLES, task.table.loc[train_ids])
    y = task.labels(train_ids).astype(int)
    model = None
    if len(set(y.tolist())) == 2:
        model = LogisticRegression(class_weight="balanced", max_iter=2000)
        model.fit(encoder.transform(task.table.loc[train_ids]), y)

    def decide(patients: list[str], unknown: Sequence[str] = ()) -> np.ndarray:
        if model is None:
            return np.full(len(patients), 1.0 if y[0] == 1 else -1.0)
        return model.decision_function(encoder.transform(task.table.loc[patients], unknown))

    return decide


def baseline_logits(
    task: HPVTask, folds, test: list[str], unknown: Sequence[str] = ()
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Logistic regression on the clinical encoding, fold by fold, as the network."""

    def fit(fold: tuple[str, str, list[str], list[str]]):
        decide = _fit_baseline(task, fold[2])
        return lambda patients: decide(patients, unknown)

    return fold_predictions(folds, test, fit, "logit")


def summarise(task: HPVTask, oof: pd.DataFrame, test: pd.DataFrame) -> dict:
    """Per-fold, pooled, per-centre, best-fold and ensemble scores of one model family."""
    kfold = oof[oof["kind"] == "kfold"]
    out: dict = {"folds": {}}
    for name, rows in kfold.groupby("fold", sort=True):
        out["folds"][name] = _scores(task.labels(rows["PatientID"]), rows["logit"].to_numpy())
    out["cv"] = _scores(task.labels(kfold["PatientID"]), kfold["logit"].to_numpy())
    centres = task.table.loc[kfold["PatientID"], "CenterID"].to_numpy()
    out["per_centre"] = {
        c: _scores(
            task.labels(kfold["PatientID"][centres == c]), kfold["logit"].to_numpy()[centres == c]
        )
        for c in sorted(set(centres))
    }
    loco = oof[oof["kind"] == "loco"]
    if len(loco):
        out["loco"] = _scores(task.labels(loco["PatientID"]), loco["logit"].to_numpy())
        out["loco_per_centre"] = {
            name.removeprefix("loco-"): _scores(
                task.labels(rows["PatientID"]), rows["logit"].to_numpy()
            )
            for name, rows in loco.groupby("fold", sort=True)
        }
    if len(test):
        best = max(
            out["folds"],
            key=lambda f: (out["folds"][f]["balanced_accuracy"], out["folds"][f]["auc"]),
        )
        wide = test.pivot(index="PatientID", columns="fold", values="logit")
        truth = task.labels(wide.index)
        out["test_best_fold"] = {"fold": best, **_scores(truth, wide[best].to_numpy())}
        out["test_ensemble"] = _scores(truth, wide.mean(axis=1).to_numpy())
    return out


def oracle_scores(
    cfg: Config, task: HPVTask, cv_patients: list[str], test: list[str]
) -> dict | None:
    """Balanced accuracy of the true probability at the training prevalence (synthetic data only)."""
    path = Path(cfg.paths.oracle)
    if not path.is_file():
        return None
    oracle = pd.read_csv(path).set_index("PatientID")["hpv_probability"]
    known = [p for p in cv_patients + test if p in oracle.index]
    if len(known) < len(cv_patients) + len(test):
        return None
    prevalence = float(task.labels(cv_patients).mean())
    out = {"threshold": prevalence}
    for name, patients in (("cv", cv_patients), ("test", test)):
        if patients:
            logit = np.log(oracle.loc[patients].to_numpy()) - np.log(
                1 - oracle.loc[patients].to_numpy()
            )
            shift = np.log(prevalence) - np.log(1 - prevalence)
            out[name] = _scores(task.labels(patients), logit - shift)
    return out


def _write_curves(plots: Path, task: HPVTask, oof: pd.DataFrame, test: pd.DataFrame) -> None:
    kfold = oof[oof["kind"] == "kfold"]
    curves = [("cv", task.labels(kfold["PatientID"]), kfold["logit"].to_numpy())]
    if len(test):
        wide = test.pivot(index="PatientID", columns="fold", values="logit")
        curves.append(("test", task.labels(wide.index), wide.mean(axis=1).to_numpy()))
    for name, truth, score in curves:
        if len(set(truth.tolist())) == 2:
            fpr, tpr, _ = roc_curve(truth.astype(int), score)
            io.write_text(
                plots / f"roc_{name}.csv",
                pd.DataFrame({"fpr": fpr, "tpr": tpr}).to_csv(index=False),
            )
        else:
            io.write_text(plots / f"roc_{name}.csv", "fpr,tpr\n0,0\n1,1\n")
    truth = task.labels(kfold["PatientID"]).astype(int)
    pred = (kfold["logit"].to_numpy() > 0).astype(int)
    io.write_text(
        plots / "confusion.csv",
        pd.DataFrame({"actual": truth, "predicted": pred}).to_csv(index=False),
    )


def _roc_inputs(task: HPVTask, oof: pd.DataFrame, test: pd.DataFrame, base_oof: pd.DataFrame,
                base_test: pd.DataFrame) -> dict[str, tuple[np.ndarray, np.ndarray]]:  # fmt: skip
    """(truth, score) of the network and the baseline, pooled out of fold and on the test set
    (the fold ensemble's mean logit)."""
    curves = {}
    for model, folds, tested in (
        ("network", oof, test),
        ("clinical baseline", base_oof, base_test),
    ):
        kfold = folds[folds["kind"] == "kfold"]
        curves[f"{model}, CV"] = (task.labels(kfold["PatientID"]), kfold["logit"].to_numpy())
        if len(tested):
            wide = tested.pivot(index="PatientID", columns="fold", values="logit")
            curves[f"{model}, test"] = (task.labels(wide.index), wide.mean(axis=1).to_numpy())
    return curves


def _confusion(truth: np.ndarray, pred: np.ndarray) -> dict[str, int]:
    truth, pred = truth.astype(int), pred.astype(int)
    return {
        "true_positive": int(((truth == 1) & (pred == 1)).sum()),
        "false_negative": int(((truth == 1) & (pred == 0)).sum()),
        "false_positive": int(((truth == 0) & (pred == 1)).sum()),
        "true_negative": int(((truth == 0) & (pred == 0)).sum()),
    }


def crossval_hpv(cfg: Config, track: bool = True) -> dict:
    """Score Task 3 and its baseline; writes ``metrics/hpv.json``, ROC/confusion plots and a report."""
    task = HPVTask(cfg.hpv, cfg.seg, cfg.paths.prepared)
    folds, test = task_folds(cfg, "hpv")
    models = load_models(cfg, task)
    oof, tested = logits_of(cfg, task, models)
    net = summarise(task, oof, tested)
    base_folds = list(folds)
    if not any(
        kind == "loco" for _, kind, _, _ in folds
    ):  # the baseline is cheap: always show LOCO
        splits = load_splits(cfg.paths.splits)
        base_folds += [(n, "loco", t, v) for n, t, v in folds_of(splits, "task3", "loco")]
    base_oof, base_test = baseline_logits(task, base_folds, test)
    base = summarise(task, base_oof, base_test)
    cv_patients = sorted({p for _, kind, _, val in folds if kind == "kfold" for p in val})
    compared = compare_with_baseline(task, pooled_values(oof, tested, "logit"),
                                     pooled_values(base_oof, base_test, "logit"))  # fmt: skip
    kfold = oof[oof["kind"] == "kfold"]
    net["confusion_cv"] = _confusion(task.labels(kfold["PatientID"]), kfold["logit"].to_numpy() > 0)
    if len(tested):
        wide = tested.pivot(index="PatientID", columns="fold", values="logit")
        net["confusion_test_ensemble"] = _confusion(
            task.labels(wide.index), wide.mean(axis=1).to_numpy() > 0
        )
    result = {
        "network": net,
        "baseline": base,
        "oracle": oracle_scores(cfg, task, cv_patients, test),
        "comparison": compared,
        "threshold": "logit > 0 (probability 0.5 under balanced training)",
    }
    result = common_keys(result) | result
    plots = Path(cfg.paths.plots) / "hpv"
    plots.mkdir(parents=True, exist_ok=True)
    _write_curves(plots, task, oof, tested)
    figures.save_figure(reports.roc_figure(_roc_inputs(task, oof, tested, base_oof, base_test)),
                        plots / "roc.png")  # fmt: skip
    matrices = {"cross-validation": net["confusion_cv"]}
    if "confusion_test_ensemble" in net:
        matrices["test (ensemble)"] = net["confusion_test_ensemble"]
    figures.save_figure(reports.confusion_figure(matrices), plots / "confusion.png")
    metrics_file = Path(cfg.paths.metrics) / "hpv.json"
    io.write_json(metrics_file, result)
    io.write_text(Path(cfg.paths.reports) / "hpv.md", render_report(result))
    if track:
        experiment = tracking.experiment("hecktor-hpv", cfg.paths.mlruns)
        with tracking.run(
            experiment, "evaluate_hpv", tracking.evaluation_tags(cfg, cfg.hpv.split, metrics_file)
        ) as run:
            numbers = {k.replace("/", "."): v for k, v in tracking.flatten(result).items()}
            run.log_metrics({k: v for k, v in numbers.items() if isinstance(v, int | float)})
            run.log_dict(result, "hpv.json")
            run.log_artifact(Path(cfg.paths.reports) / "hpv.md")
    log.info(
        "Task 3 network: %s",
        {
            k: round(v["balanced_accuracy"], 3)
            for k, v in net.items()
            if k in ("cv", "test_ensemble", "test_best_fold", "loco")
        },
    )
    log.info(
        "Task 3 baseline: %s",
        {
            k: round(v["balanced_accuracy"], 3)
            for k, v in base.items()
            if k in ("cv", "test_ensemble", "test_best_fold", "loco")
        },
    )
    return result


def _ba(truth: np.ndarray, logits: np.ndarray) -> float:
    return metrics.balanced_accuracy(truth, (logits > 0).astype(int))


FIGURES = {"balanced_accuracy": _ba, "auc": metrics.auc}


def compare_with_baseline(
    task: HPVTask, network: dict[str, pd.Series], baseline: dict[str, pd.Series],
    resamples: int = 1000,
) -> dict:  # fmt: skip
    """Balanced accuracy and AUC of the network against the baseline's on the same patients
    (cross-validation, and the test ensemble where there is one), with paired bootstrap intervals."""
    out = {}
    for split, values in network.items():
        patients = sorted(set(values.index) & set(baseline[split].index))
        truth = task.labels(patients).astype(int)
        a, b = values.loc[patients].to_numpy(), baseline[split].loc[patients].to_numpy()
        for name, figure in FIGURES.items():
            out[f"{split}_{name}"] = comparison.compare_predictions(
                figure, truth, a, b, resamples, chance=0.5
            ).to_dict()
    return out


def common_keys(result: dict) -> dict:
    """The keys every task's metrics share: the registry's score and the report's headline rows."""
    net, oracle = result["network"], result["oracle"] or {}
    rows = [
        reports.headline_row(
            f"{split} {name.replace('_', ' ') if name != 'auc' else 'AUC'}",
            result["comparison"][f"{split}_{name}"],
            oracle.get(truth, {}).get(name),
        )
        for split, truth in (("cv", "cv"), ("test_ensemble", "test"))
        for name in FIGURES
        if f"{split}_{name}" in result["comparison"]
    ]
    score = net["cv"]["balanced_accuracy"]
    return {
        "task": "hpv",
        "score": {"name": "cross-validated balanced accuracy", "value": score},
        "headline": rows,
    }


def render_report(result: dict) -> str:
    net, base, oracle = result["network"], result["baseline"], result["oracle"] or {}
    rows = []
    for label, source in (("network", net), ("clinical logistic regression", base)):
        rows.append({
            "model": label,
            "CV BA": source["cv"]["balanced_accuracy"], "CV AUC": source["cv"]["auc"],
            "LOCO BA": source.get("loco", {}).get("balanced_accuracy", float("nan")),
            "test BA, best fold": source.get("test_best_fold", {}).get("balanced_accuracy", float("nan")),
            "test BA, ensemble": source.get("test_ensemble", {}).get("balanced_accuracy", float("nan")),
            "test AUC, ensemble": source.get("test_ensemble", {}).get("auc", float("nan")),
        })  # fmt: skip
    if oracle:
        rows.append({"model": "oracle (true probability)", "CV BA": oracle["cv"]["balanced_accuracy"],
                     "CV AUC": oracle["cv"]["auc"],
                     "test BA, ensemble": oracle.get("test", {}).get("balanced_accuracy", float("nan")),
                     "test AUC, ensemble": oracle.get("test", {}).get("auc", float("nan"))})  # fmt: skip
    columns = [
        "model",
        "CV BA",
        "CV AUC",
        "LOCO BA",
        "test BA, best fold",
        "test BA, ensemble",
        "test AUC, ensemble",
    ]
    fold_rows = [{"fold": f, "network BA": v["balanced_accuracy"], "baseline BA": base["folds"].get(f, {}).get("balanced_accuracy", float("nan")),
                  "patients": v["n"], "HPV-negative": v["n_negative"]} for f, v in net["folds"].items()]  # fmt: skip
    centre_rows = [{"centre": c, "network BA": v["balanced_accuracy"], "baseline BA": base["per_centre"].get(c, {}).get("balanced_accuracy", float("nan")),
                    "patients": v["n"], "HPV-negative": v["n_negative"]} for c, v in net["per_centre"].items()]  # fmt: skip
    lines = [
        "# Task 3: HPV status",
        "",
        "Balanced accuracy (BA) at logit 0; CV pools every fold's validation patients; the test set is "
        "the patients no fold trained on. The best fold is the one with the highest CV BA (the paper's pick).",
        "",
        reports.markdown_table(rows, columns),
        "",
        "Network against the baseline on the same patients, with 95 % bootstrap intervals over "
        "patients (the same resamples for both):",
        "",
        reports.markdown_table(
            [
                {"figure": k.replace("_", " "), **reports.comparison_cells(v)}
                for k, v in result["comparison"].items()
            ],
            ["figure", *reports.COMPARISON_COLUMNS],
        ),
        "",
        "## Folds",
        "",
        reports.markdown_table(
            fold_rows, ["fold", "network BA", "baseline BA", "patients", "HPV-negative"]
        ),
        "",
        "## Centres (cross-validation)",
        "",
        reports.markdown_table(
            centre_rows, ["centre", "network BA", "baseline BA", "patients", "HPV-negative"]
        ),
        "",
        "## Confusion (network, logit > 0)",
        "",
        reports.markdown_table(
            [
                {
                    "": name,
                    "HPV+ called +": m["true_positive"],
                    "HPV+ called -": m["false_negative"],
                    "HPV- called +": m["false_positive"],
                    "HPV- called -": m["true_negative"],
                }
                for name, m in (
                    ("cross-validation", net["confusion_cv"]),
                    ("test (ensemble)", net.get("confusion_test_ensemble")),
                )
                if m
            ],
            ["", "HPV+ called +", "HPV+ called -", "HPV- called +", "HPV- called -"],
        ),
        "",
        "![ROC curves](../plots/hpv/roc.png) ![Confusion matrices](../plots/hpv/confusion.png)",
        "",
    ]
    return "\n".join(lines)


ABLATIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("none", ()),
    ("Age", ("Age",)),
    ("Gender", ("Gender",)),
    ("Alcohol", ("Alcohol Consumption",)),
    ("Tobacco", ("Tobacco Consumption",)),
    ("all four", HPV_VARIABLES),
)


def ablate_hpv(cfg: Config, track: bool = True) -> dict:
    """The paper's Table 3: each clinical variable (and all four) set to unknown at inference."""
    task = HPVTask(cfg.hpv, cfg.seg, cfg.paths.prepared)
    folds, test = task_folds(cfg, "hpv")
    models = load_models(cfg, task)
    task.feature_cache = {}  # each patient's image is encoded once per model, not once per row
    rows = []
    for name, unknown in ABLATIONS:
        net = summarise(task, *logits_of(cfg, task, models, unknown))
        base = summarise(task, *baseline_logits(task, folds, test, unknown))
        row: dict = {"unknown": name}
        row |= {short: ("unknown" if var in unknown else "known") for short, var in
                (("Age", "Age"), ("Sex", "Gender"), ("Alc", "Alcohol Consumption"), ("Smo", "Tobacco Consumption"))}  # fmt: skip
        row["network CV BA"] = net["cv"]["balanced_accuracy"]
        row["network test BA (ensemble)"] = net.get("test_ensemble", {}).get(
            "balanced_accuracy", float("nan")
        )
        row["baseline CV BA"] = base["cv"]["balanced_accuracy"]
        rows.append(row)
    result = {"rows": rows}
    columns = [
        "Age",
        "Sex",
        "Alc",
        "Smo",
        "network CV BA",
        "network test BA (ensemble)",
        "baseline CV BA",
    ]
    text = "\n".join([
        "# Task 3: clinical-variable ablation (the paper's Table 3)",
        "",
        "Each variable, then all four, set to unknown (-1) at inference only; the models are not retrained.",
        "",
        reports.markdown_table(rows, columns),
        "",
    ])  # fmt: skip
    io.write_json(Path(cfg.paths.metrics) / "hpv_ablation.json", result)
    io.write_text(Path(cfg.paths.reports) / "hpv_ablation.md", text)
    if track:
        experiment = tracking.experiment("hecktor-hpv", cfg.paths.mlruns)
        with tracking.run(experiment, "ablate_hpv", tracking.run_tags(cfg, cfg.hpv.split)) as run:
            for row in rows:
                key = row["unknown"].replace(" ", "_")
                run.log_metrics({f"unknown_{key}_cv_ba": row["network CV BA"],
                                 f"unknown_{key}_test_ba": row["network test BA (ensemble)"]})  # fmt: skip
            run.log_dict(result, "hpv_ablation.json")
            run.log_artifact(Path(cfg.paths.reports) / "hpv_ablation.md")
    log.info(
        "Task 3 ablation:\n%s",
        reports.markdown_table(rows, ["unknown", "network CV BA", "network test BA (ensemble)"]),
    )
    return result
