"""Task 2 scored on unseen patients, beside Cox baselines and the oracle.

For each training mode (``gt``: trained on true masks and HPV; ``pred``: on predicted ones) every
fold model scores its validation patients (out of fold) and the test set from predicted masks and
HPV, as a new patient would be, and again from true ones, as the paper's cross-validation did. A
fold model's risks are standardised by its own training patients' risks (mean and standard
deviation) so that folds can be pooled and averaged: the Cox loss fixes risks only up to a shift.

Two chains are reported, each on true and on predicted inputs: the paper's (the best fold trained on
true inputs, by its validation C-index on true inputs; on the test set, HPV from the best single
Task 3 fold) and the ensemble (the mean standardised risk of the folds trained on predicted inputs).
The registry serves the one ``rfs.chain`` names.

Baselines (lifelines ``CoxPHFitter``, ridge 0.1) on the same folds and the same predicted inputs: the
clinical variables alone, and with image features of the predicted masks (primary volume, SUVmax,
metabolic tumour volume, total lesion glycolysis, number of nodes). The oracle's true log-hazard
gives the best achievable C-index on the same patients.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from lifelines import CoxPHFitter, KaplanMeierFitter
from lifelines.plotting import add_at_risk_counts
from lifelines.statistics import logrank_test
from scipy import ndimage

from hecktor import comparison, io, metrics, reports, tracking
from hecktor.checkpoints import load_trained
from hecktor.config import Config
from hecktor.data.clinical import RFS_VARIABLES, ClinicalEncoder
from hecktor.data.folds import folds_of, load_splits
from hecktor.data.preprocess import load_prepared
from hecktor.data.splits import fold_predictions, pooled_values
from hecktor.derive import derive_rfs_inputs
from hecktor.devices import autocast_for, precision_for, resolve_device
from hecktor.tasks import task_folds
from hecktor.tasks.rfs import SINGLE_FOLD, RFSTask, registered_mode

log = logging.getLogger(__name__)
IMAGE_FEATURES = ("primary_cc", "suv_max", "mtv_cc", "tlg", "nodes")


def c_index_with_ci(time, event, risk, resamples: int, seed: int = 0) -> dict[str, float]:
    """Harrell's C-index and a percentile bootstrap 95 % interval over patients."""
    time, event, risk = map(np.asarray, (time, event, risk))
    value = metrics.c_index(time, event, risk)
    out = {"c_index": value, "n": len(time), "events": int(event.sum())}
    if resamples and len(time) > 2:
        rng = np.random.default_rng(seed)
        draws = []
        for _ in range(resamples):
            idx = rng.integers(0, len(time), len(time))
            v = metrics.c_index(time[idx], event[idx], risk[idx])
            if v == v:
                draws.append(v)
        if draws:
            out["ci_low"], out["ci_high"] = (float(q) for q in np.percentile(draws, [2.5, 97.5]))
    return out


def image_features(task: RFSTask, patient: str) -> dict[str, float]:
    """Simple PET/CT features of a predicted mask (volumes in cc, SUV restored from the z-score)."""
    case = load_prepared(task.prepared, patient)
    mask = task.mask(patient, "pred")
    suv = np.asarray(case.image[1]) * case.meta["pet_std"] + case.meta["pet_mean"]
    voxel_cc = float(np.prod(case.meta["grid"]["spacing"])) / 1000.0
    lesion = mask > 0
    primary = mask == 1
    return {
        "primary_cc": float(primary.sum() * voxel_cc),
        "suv_max": float(suv[lesion].max()) if lesion.any() else 0.0,
        "mtv_cc": float(lesion.sum() * voxel_cc),
        "tlg": float(suv[lesion].sum() * voxel_cc) if lesion.any() else 0.0,
        "nodes": float(ndimage.label(mask == 2, structure=np.ones((3, 3, 3)))[1]),
    }


def _steps(cfg: Config) -> dict:
    device = resolve_device(cfg.rfs.train.device)
    return {"device": device, "autocast": autocast_for(precision_for(cfg.rfs.train.precision, device), device)}  # fmt: skip


def network_risks(
    cfg: Config, task: RFSTask, mode: str, inputs: str = "pred"
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Standardised out-of-fold and test risks of one training mode's fold models, from
    ``inputs`` (:data:`hecktor.tasks.rfs.INPUTS`)."""
    steps = _steps(cfg)
    folds, test = task_folds(cfg, "rfs")

    def fit(fold: tuple[str, str, list[str], list[str]]):
        name, _, train_ids, _ = fold
        model, _ = load_trained(
            task, Path(cfg.paths.models) / "rfs" / f"{mode}-{name}", steps["device"]
        )
        mean, std = task.risk_scale(model, train_ids, inputs=inputs, **steps)
        return lambda patients: (task.risks(model, patients, inputs=inputs, **steps) - mean) / std

    return fold_predictions(folds, test, fit, "risk")


def _best_fold(folds: dict[str, dict]) -> str:
    return max(folds, key=lambda f: np.nan_to_num(folds[f]["c_index"], nan=-1))


def chains(
    cfg: Config, task: RFSTask, result: dict, true_test: dict, test: list[str],
    served: dict[str, pd.Series],
) -> dict:  # fmt: skip
    """The paper's chain and the ensemble, each on true and on predicted inputs: CV (pooled out of
    fold), the chosen fold's own validation patients (the paper's chain), and the test set. The
    paper chain's test risks on predicted inputs go into ``served`` (by chain)."""
    score = _scorer(task, cfg.rfs.bootstrap)
    out: dict = {}
    if "gt" in cfg.rfs.modes:
        on_true, on_pred = result["network_on_true"]["gt"], result["network"]["gt"]
        best = _best_fold(on_true["folds"])
        single = json.loads((task.inputs_dir / SINGLE_FOLD).read_text())
        paper: dict = {"mode": "gt", "fold": best, "hpv_fold": single["fold"],
                       "hpv_fold_balanced_accuracy": single["balanced_accuracy"],
                       "true": {"cv": on_true["cv"], "fold_validation": on_true["folds"][best]},
                       "predicted": {"cv": on_pred["cv"], "fold_validation": on_pred["folds"][best]}}  # fmt: skip
        if test:
            steps = _steps(cfg)
            model, _ = load_trained(
                task, Path(cfg.paths.models) / "rfs" / f"gt-{best}", steps["device"]
            )
            wide = true_test["gt"].pivot(index="PatientID", columns="fold", values="risk")
            paper["true"]["test"] = score(wide.index, wide[best])
            risk = task.risks(model, test, inputs="pred_single", **steps)
            paper["predicted"]["test"] = score(test, risk)
            served["paper"] = pd.Series(risk, index=test).sort_index()
        out["paper"] = paper
    mode = "pred" if "pred" in cfg.rfs.modes else cfg.rfs.modes[0]
    out["ensemble"] = {"mode": mode, "folds": len(result["network"][mode]["folds"])} | {
        side: {"cv": source[mode]["cv"], "test": source[mode].get("test_ensemble")}
        for side, source in (("true", result["network_on_true"]), ("predicted", result["network"]))
    }
    return out


def baseline_risks(
    task: RFSTask, folds, test: list[str], with_images: bool
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Cox proportional hazards on clinical variables (and image features), fold by fold."""
    patients = sorted({p for _, _, t, v in folds for p in t + v} | set(test))
    features = (
        pd.DataFrame({p: image_features(task, p) for p in patients}).T if with_images else None
    )

    def fit(fold: tuple[str, str, list[str], list[str]]):
        train_ids = fold[2]
        encoder = ClinicalEncoder.fit(RFS_VARIABLES, task.frame(train_ids, "pred"))

        def design(ids: list[str]) -> pd.DataFrame:
            x = pd.DataFrame(
                encoder.transform(task.frame(ids, "pred")), columns=encoder.columns, index=ids
            )
            if features is not None:
                image = features.loc[ids].copy()
                for column in ("primary_cc", "mtv_cc", "tlg"):
                    image[column] = np.log1p(image[column])
                x = pd.concat([x, image], axis=1)
            return x

        train = design(train_ids)
        keep = [c for c in train.columns if train[c].std() > 0]
        frame = train[keep].assign(
            T=task.table.loc[train_ids, "RFS"].to_numpy(),
            E=task.table.loc[train_ids, "Relapse"].to_numpy(),
        )
        model = CoxPHFitter(penalizer=0.1).fit(frame, duration_col="T", event_col="E")
        return lambda ids: model.predict_log_partial_hazard(design(ids)[keep]).to_numpy()

    return fold_predictions(folds, test, fit, "risk")


def _scorer(task: RFSTask, resamples: int):
    def score(patients, risk) -> dict[str, float]:
        patients = list(patients)
        time = task.table.loc[patients, "RFS"].to_numpy(float)
        event = task.table.loc[patients, "Relapse"].to_numpy(float)
        return c_index_with_ci(time, event, np.asarray(risk, float), resamples)

    return score


def summarise(task: RFSTask, oof: pd.DataFrame, test: pd.DataFrame, resamples: int) -> dict:
    score = _scorer(task, resamples)

    kfold = oof[oof["kind"] == "kfold"]
    out: dict = {
        "folds": {n: score(r["PatientID"], r["risk"]) for n, r in kfold.groupby("fold", sort=True)}
    }
    out["cv"] = score(kfold["PatientID"], kfold["risk"])
    centres = task.table.loc[kfold["PatientID"], "CenterID"].to_numpy()
    out["per_centre"] = {
        c: score(kfold["PatientID"][centres == c], kfold["risk"][centres == c])
        for c in sorted(set(centres))
    }
    loco = oof[oof["kind"] == "loco"]
    if len(loco):
        out["loco"] = score(loco["PatientID"], loco["risk"])
    if len(test):
        best = _best_fold(out["folds"])
        wide = test.pivot(index="PatientID", columns="fold", values="risk")
        out["test_best_fold"] = {"fold": best, **score(wide.index, wide[best])}
        out["test_ensemble"] = score(wide.index, wide.mean(axis=1))
    return out


def km_figure(task: RFSTask, patients, risk, title: str):
    """Kaplan-Meier curves of the predicted low- and high-risk halves, with the log-rank p-value."""
    patients = list(patients)
    time = task.table.loc[patients, "RFS"].to_numpy(float)
    event = task.table.loc[patients, "Relapse"].to_numpy(float)
    high = np.asarray(risk) > np.median(risk)
    p_value = (
        float(logrank_test(time[high], time[~high], event[high], event[~high]).p_value)
        if high.any() and (~high).any()
        else float("nan")
    )
    fig, ax = plt.subplots(figsize=(5.5, 4.8))
    fitters = []
    for mask, label in ((~high, "low risk"), (high, "high risk")):
        if mask.any():
            fitters.append(KaplanMeierFitter().fit(time[mask], event[mask], label=label))
            fitters[-1].plot_survival_function(ax=ax)
    if fitters:
        add_at_risk_counts(*fitters, ax=ax, rows_to_show=["At risk", "Events"])
    ax.set_xlabel("days")
    ax.set_ylabel("recurrence-free survival")
    ax.set_title(f"{title}\nlog-rank p = {p_value:.3g}", fontsize=9)
    fig.tight_layout()
    return fig, p_value


BASELINE_NAMES = {
    "baseline_clinical": "clinical Cox",
    "baseline_clinical_image": "clinical + image Cox",
}


def _c_index(truth: np.ndarray, risk: np.ndarray) -> float:
    return metrics.c_index(truth[:, 0], truth[:, 1], risk)


def compare_with_baselines(
    task: RFSTask, network: dict[str, pd.Series], baselines: dict[str, dict[str, pd.Series]],
    resamples: int,
) -> dict:  # fmt: skip
    """The served chain's C-index on predicted inputs (cross-validation, and the test set where
    there is one) against each Cox baseline's on the same patients, with paired bootstrap intervals."""
    out: dict = {}
    for split, risk in network.items():
        patients = sorted(risk.index)
        truth = task.table.loc[patients, ["RFS", "Relapse"]].to_numpy(float)
        out[split] = {
            name: comparison.compare_predictions(
                _c_index, truth, risk.loc[patients].to_numpy(float),
                base[split].loc[patients].to_numpy(float), resamples, chance=0.5,
            ).to_dict()
            for name, base in baselines.items() if split in base
        }  # fmt: skip
    return out


def common_keys(result: dict, chain: str, registered: str) -> dict:
    """The keys every task's metrics share: the registry's score (the registered mode's CV
    C-index) and the report's headline rows: the registered chain on predicted inputs (what a new
    patient gets; not the better of the modes, which would pick on the figures it reports) beside
    the better Cox baseline (by its figure: the stronger opponent)."""
    rows = []
    for split, key in (("cv", "cv"), ("test", "test_ensemble")):
        against = result["comparison"].get(key)
        if not against:
            continue
        strongest = max(against.values(), key=lambda c: np.nan_to_num(c["baseline"], nan=-1))
        rows.append(reports.headline_row(
            f"{split} C-index ({chain} chain)", strongest,
            result.get("oracle", {}).get(split, {}).get("c_index"),
        ))  # fmt: skip
    return {
        "task": "rfs",
        "score": {"name": "cross-validated C-index",
                  "value": result["network"][registered]["cv"]["c_index"]},
        "headline": rows,
    }  # fmt: skip


def crossval_rfs(cfg: Config, track: bool = True) -> dict:
    """Score Task 2 (both training modes), its baselines and the oracle; writes metrics, KM, report."""
    task = RFSTask(cfg.rfs, cfg.paths.prepared, derive_rfs_inputs(cfg))
    folds, test = task_folds(cfg, "rfs")
    result: dict = {
        "network": {},
        "network_on_true": {},
        "inputs": task.inputs[["seg_source", "hpv_source"]]
        .apply(lambda c: c.value_counts().to_dict())
        .to_dict(),
    }
    frames, true_test = {}, {}
    for mode in cfg.rfs.modes:
        frames[mode] = network_risks(cfg, task, mode)
        result["network"][mode] = summarise(task, *frames[mode], cfg.rfs.bootstrap)
        oof, true_test[mode] = network_risks(cfg, task, mode, "gt")
        result["network_on_true"][mode] = summarise(task, oof, true_test[mode], cfg.rfs.bootstrap)
    base_folds = list(folds)
    if not any(kind == "loco" for _, kind, _, _ in folds):
        base_folds += [
            (n, "loco", t, v)
            for n, t, v in folds_of(load_splits(cfg.paths.splits), "task2", "loco")
        ]
    baselines = {name: baseline_risks(task, base_folds, test, images)
                 for name, images in (("baseline_clinical", False), ("baseline_clinical_image", True))}  # fmt: skip
    for name, frames_of in baselines.items():
        result[name] = summarise(task, *frames_of, cfg.rfs.bootstrap)
    cv_patients = sorted({p for _, kind, _, val in folds if kind == "kfold" for p in val})
    oracle_path = Path(cfg.paths.oracle)
    if oracle_path.is_file():
        oracle = pd.read_csv(oracle_path).set_index("PatientID")["log_hazard"]
        if set(cv_patients + test) <= set(oracle.index):
            result["oracle"] = {name: c_index_with_ci(task.table.loc[ps, "RFS"], task.table.loc[ps, "Relapse"],
                                                      oracle.loc[ps].to_numpy(), cfg.rfs.bootstrap)
                                for name, ps in (("cv", cv_patients), ("test", test)) if ps}  # fmt: skip
    best_mode = max(
        cfg.rfs.modes, key=lambda m: np.nan_to_num(result["network"][m]["cv"]["c_index"], nan=-1)
    )
    kfold = frames[best_mode][0][frames[best_mode][0]["kind"] == "kfold"]
    figure, p_value = km_figure(
        task, kfold["PatientID"], kfold["risk"], f"network ({best_mode}), cross-validation"
    )
    result["km"] = {"mode": best_mode, "logrank_p": p_value}
    served: dict[str, pd.Series] = {}
    result["chains"] = chains(cfg, task, result, true_test, test, served)
    mode = "gt" if cfg.rfs.chain == "paper" else registered_mode(cfg)
    network = pooled_values(*frames[mode], "risk")
    if "paper" in served and cfg.rfs.chain == "paper":
        network["test_ensemble"] = served["paper"]
    result["served_chain"] = cfg.rfs.chain
    result["comparison"] = compare_with_baselines(
        task, network, {b: pooled_values(*baselines[b], "risk") for b in baselines},
        cfg.rfs.bootstrap,
    )  # fmt: skip
    plots = Path(cfg.paths.plots) / "rfs"
    plots.mkdir(parents=True, exist_ok=True)
    with io.atomic_path(plots / "km.png") as tmp:
        figure.savefig(tmp, dpi=90, format="png")
    result = common_keys(result, cfg.rfs.chain, registered_mode(cfg)) | result
    metrics_file = Path(cfg.paths.metrics) / "rfs.json"
    io.write_json(metrics_file, result)
    io.write_text(Path(cfg.paths.reports) / "rfs.md", render_report(result, cfg.rfs.modes))
    if track:
        experiment = tracking.experiment("hecktor-rfs", cfg.paths.mlruns)
        with tracking.run(
            experiment, "evaluate_rfs", tracking.evaluation_tags(cfg, cfg.rfs.split, metrics_file)
        ) as run:
            numbers = tracking.flatten(result)
            run.log_metrics(
                {
                    k: v
                    for k, v in numbers.items()
                    if isinstance(v, int | float) and not isinstance(v, bool)
                }
            )
            run.log_figure(figure, "km.png")
            run.log_dict(result, "rfs.json")
    plt.close(figure)
    log.info("Task 2 against the baselines: %s",
             {split: {BASELINE_NAMES[b]: c["verdict"] for b, c in against.items()}
              for split, against in result["comparison"].items()})  # fmt: skip
    return result


def chain_section(chains: dict, cell) -> list[str]:
    """The chains on true and on predicted inputs: what the paper's CV figure measured beside
    what a new patient gets."""
    rows = []
    paper = chains.get("paper")
    if paper:
        name = (f"paper: {paper['fold']} trained on true inputs; HPV from Task 3's "
                f"{paper['hpv_fold']} (validation BA {paper['hpv_fold_balanced_accuracy']:.3f})")  # fmt: skip
        for side, label in (
            ("true", "true masks and HPV"),
            ("predicted", "predicted masks and HPV"),
        ):
            figures = paper[side]
            rows.append({"chain": name, "inputs": label, "CV": cell(figures["cv"]),
                         "its fold's validation": cell(figures["fold_validation"]),
                         "test": cell(figures.get("test"))})  # fmt: skip
    ensemble = chains["ensemble"]
    name = (f"ensemble: mean of {ensemble['folds']} folds trained on "
            f"{'predicted' if ensemble['mode'] == 'pred' else 'true'} inputs")  # fmt: skip
    for side, label in (("true", "true masks and HPV"), ("predicted", "predicted masks and HPV")):
        rows.append({"chain": name, "inputs": label, "CV": cell(ensemble[side]["cv"]),
                     "its fold's validation": "", "test": cell(ensemble[side].get("test"))})  # fmt: skip
    notes = [
        "## Chains: the paper's and the ensemble, on true and on predicted inputs",
        "",
        reports.markdown_table(rows, ["chain", "inputs", "CV", "its fold's validation", "test"]),
        "",
        "The paper's cross-validated figure is a fold model validated on its own patients with true "
        'masks and HPV (first row, "its fold\'s validation"); a new patient has only predicted ones. '
        "In CV, predicted HPV is out of fold; on the test set the paper's chain takes it from one Task 3 "
        "fold model, as its submission did.",
    ]
    if not paper:
        notes += ["", "The paper's chain is not trained here (`rfs.modes` has no `gt`)."]
    return [*notes, ""]


def render_report(result: dict, modes) -> str:
    def cell(entry: dict | None) -> str:
        if not entry or entry.get("c_index") != entry.get("c_index"):
            return "n/a"
        text = f"{entry['c_index']:.3f}"
        if "ci_low" in entry:
            text += f" [{entry['ci_low']:.2f}, {entry['ci_high']:.2f}]"
        return text

    rows = []
    families = [
        (f"network, trained on {'true' if m == 'gt' else 'predicted'} inputs", result["network"][m])
        for m in modes
    ]
    families += [
        ("clinical Cox", result["baseline_clinical"]),
        ("clinical + image Cox", result["baseline_clinical_image"]),
    ]
    for label, source in families:
        rows.append({"model": label, "CV": cell(source["cv"]), "LOCO": cell(source.get("loco")),
                     "test, best fold": cell(source.get("test_best_fold")), "test, ensemble": cell(source.get("test_ensemble"))})  # fmt: skip
    if "oracle" in result:
        rows.append({"model": "oracle (true log-hazard)", "CV": cell(result["oracle"].get("cv")),
                     "test, ensemble": cell(result["oracle"].get("test"))})  # fmt: skip
    fold_rows = []
    for m in modes:
        for fold, entry in result["network"][m]["folds"].items():
            fold_rows.append(
                {
                    "mode": m,
                    "fold": fold,
                    "C-index": cell(entry),
                    "patients": entry["n"],
                    "events": entry["events"],
                }
            )
    centre_rows = [{"centre": c, **{f"network ({m})": cell(result["network"][m]["per_centre"].get(c)) for m in modes},
                    "clinical Cox": cell(result["baseline_clinical"]["per_centre"].get(c))}
                   for c in result["baseline_clinical"]["per_centre"]]  # fmt: skip
    return "\n".join([
        "# Task 2: recurrence-free survival",
        "",
        "Harrell's C-index [bootstrap 95 % interval]; every model here is evaluated on predicted masks and HPV. "
        "CV pools every fold's validation patients; the test set is the patients no fold trained on.",
        "Where each patient's predicted inputs come from (patients):",
        "",
        reports.markdown_table(
            [{"input": name, **counts} for name, counts in
             (("mask (Task 1)", result["inputs"]["seg_source"]), ("HPV (Task 3)", result["inputs"]["hpv_source"]))],
            ["input", *dict.fromkeys(k for c in result["inputs"].values() for k in c)],
        ),
        "",
        reports.markdown_table(rows, ["model", "CV", "LOCO", "test, best fold", "test, ensemble"]),
        "",
        f"The {result['served_chain']} chain on predicted inputs (what a new patient gets) against each "
        "baseline on the same patients, with 95 % bootstrap intervals (the same resamples for both):",
        "",
        reports.markdown_table(
            [{"split": split, "baseline": BASELINE_NAMES[b], **reports.comparison_cells(c)}
             for split, against in result["comparison"].items() for b, c in against.items()],
            ["split", "baseline", *reports.COMPARISON_COLUMNS],
        ),
        "",
        *chain_section(result["chains"], cell),
        "## Folds",
        "",
        reports.markdown_table(fold_rows, ["mode", "fold", "C-index", "patients", "events"]),
        "",
        "## Centres (cross-validation)",
        "",
        reports.markdown_table(centre_rows, ["centre", *[f"network ({m})" for m in modes], "clinical Cox"]),
        "",
        f"![Kaplan-Meier by predicted risk](../plots/rfs/km.png) (log-rank p = {result['km']['logrank_p']:.3g})",
        "",
    ])  # fmt: skip
