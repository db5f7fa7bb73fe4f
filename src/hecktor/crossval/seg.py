"""Score trained models on the patients they never saw, against a simple baseline.

For Task 1: every fold's validation patients are segmented by the best checkpoint and by its SWA
refinement, each with and without small-lesion removal, and by the PET-threshold baseline. Every
prediction is written as ``<PID>.nii.gz`` on the patient's original CT grid and scored by the same
code as ``hecktor evaluate seg``, against the release's labels.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from hecktor import baselines, comparison, evaluation, figures, io, metrics, reports, tracking
from hecktor.checkpoints import load_checkpoint, model_from, trained_checkpoint
from hecktor.config import Config, SegConfig
from hecktor.data import layout
from hecktor.data.folds import folds_of, load_splits
from hecktor.data.preprocess import Geometry, load_prepared, to_original_grid
from hecktor.devices import autocast_for, precision_for, resolve_device
from hecktor.errors import UserError
from hecktor.lesions import remove_small_lesions
from hecktor.tasks.seg import SegmentationTask

log = logging.getLogger(__name__)

SEG_METRICS = ("GTVp_DSC", "GTVn_DSCagg", "GTVn_F1agg", "score")
VARIANTS = ("best", "best_pp", "swa", "swa_pp", "baseline")


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _write_mask(path: Path, labels: np.ndarray, meta: dict) -> None:
    image = to_original_grid(
        labels, Geometry.from_dict(meta["grid"]), Geometry.from_dict(meta["ct_grid"])
    )
    io.write_image(path, image)


def _predict(cfg: Config, folds, pred_root: Path) -> list[tuple]:
    """Write every validation patient's masks, per variant and with the baseline, into
    ``pred_root`` (with links to the true masks); returns the cases the figure shows."""
    seg = cfg.seg
    task = SegmentationTask(seg, cfg.paths.prepared)
    model_root = Path(cfg.paths.models) / "seg"
    release = layout.scan_release(cfg.paths.release)
    labels = {c.patient: c.label for c in release.cases.get(1, [])}
    device = resolve_device(seg.train.device)
    autocast = autocast_for(precision_for(seg.train.precision, device), device)
    projections: dict[str, tuple] = {}  # what the figure may show of each patient: small MIPs
    for name, _, val_ids in folds:
        models = {}
        for variant in ("best", "swa"):
            path = model_root / name / f"{variant}.pt"
            if path.is_file():
                models[variant] = model_from(task, load_checkpoint(path, device), device)
        if "best" not in models:
            raise UserError(f"{model_root / name}: no trained model; run `hecktor train seg`")
        for patient in val_ids:
            case = load_prepared(cfg.paths.prepared, patient)
            suv = np.asarray(case.image[1]) * case.meta["pet_std"] + case.meta["pet_mean"]
            _link(labels[patient], pred_root / "truth" / f"{patient}.nii.gz")
            for variant, model in models.items():
                raw = task.predict(model, case.image, device, autocast)
                cleaned = remove_small_lesions(raw, seg.min_lesion_mm3, task.voxel_mm3)
                _write_mask(pred_root / variant / f"{patient}.nii.gz", raw, case.meta)
                _write_mask(pred_root / f"{variant}_pp" / f"{patient}.nii.gz", cleaned, case.meta)
                shown = variant == "swa" or "swa" not in models
                if shown:
                    projections[patient] = (suv.max(axis=1), figures.label_mip(cleaned),
                                            figures.label_mip(np.asarray(case.label)))  # fmt: skip
            base = baselines.pet_threshold(
                suv, task.voxel_mm3, seg.baseline_suv, seg.min_lesion_mm3
            )
            _write_mask(pred_root / "baseline" / f"{patient}.nii.gz", base, case.meta)
        del models
    return projections


def _score(pred_root: Path, network: str) -> dict:
    """Score every variant's masks against the truth; the result ``metrics/seg.json`` holds."""
    scores = {}
    for variant in VARIANTS:
        if (pred_root / variant).is_dir():
            scores[variant] = evaluation.evaluate_segmentation(
                pred_root / variant, pred_root / "truth"
            )
            io.write_json(pred_root / variant / "metrics.json", scores[variant])
    return {
        "chosen": network,
        "n_patients": scores[network]["n_patients"],
        "variants": {v: {k: scores[v][k] for k in SEG_METRICS} for v in scores},
        "comparison": compare_with_baseline(scores[network], scores["baseline"]),
        "per_centre": scores[network]["per_centre"],
        "baseline_per_centre": scores["baseline"]["per_centre"],
    }


def compare_with_baseline(network: dict, baseline: dict, resamples: int = 1000) -> dict:
    """Each metric of the network against the baseline's, resampling the same patients."""
    patients = sorted(network["patients"])
    rows = {name: [s["patients"][p] for p in patients]
            for name, s in (("network", network), ("baseline", baseline))}  # fmt: skip

    def score(name: str, metric: str):
        return lambda idx: metrics.scores_of_patients([rows[name][i] for i in idx])[metric]

    return {
        k: comparison.compare(score("network", k), score("baseline", k), len(patients),
                              resamples).to_dict()
        for k in SEG_METRICS
    }  # fmt: skip


def common_keys(result: dict, split: str) -> dict:
    """The keys every task's metrics share: the registry's score and the report's headline rows."""
    chosen = result["variants"][result["chosen"]]
    where = "hold-out" if split == "holdout" else split
    return {
        "task": "seg",
        "score": {"name": "score (mean of GTVp DSC, GTVn DSCagg, GTVn F1agg)",
                  "value": chosen["score"]},
        "headline": [
            reports.headline_row(f"{where} {k}", result["comparison"][k], None)
            for k in SEG_METRICS
        ],
    }  # fmt: skip


def render_report(result: dict, seg: SegConfig) -> str:
    network = result["chosen"]
    rows = [{"variant": v, **result["variants"][v]} for v in result["variants"]]
    against = [{"metric": k, **reports.comparison_cells(result["comparison"][k])}
               for k in SEG_METRICS]  # fmt: skip
    lines = [
        "# Task 1: segmentation",
        "",
        f"{result['n_patients']} validation patients ({seg.split}); predictions on the original CT grids.",
        "`_pp`: connected components under "
        f"{seg.min_lesion_mm3:g} mm^3 removed. `baseline`: PET SUV >= {seg.baseline_suv:g}.",
        "",
        reports.markdown_table(rows, ["variant", *SEG_METRICS]),
        "",
        f"Network ({network}) against the baseline, metric by metric, with 95 % bootstrap "
        "intervals over patients (the same resamples for both):",
        "",
        reports.markdown_table(against, ["metric", *reports.COMPARISON_COLUMNS]),
        "",
        f"Maximum intensity projections of PET, prediction ({network}) and truth: the best, median and "
        "worst validation cases by GTVp DSC.",
        "",
        "![MIPs of PET, prediction and truth](../plots/seg/mip.png)",
        "",
    ]
    return "\n".join(lines)


def crossval_seg(cfg: Config, track: bool = True) -> dict:
    """Predict, score and compare; writes predictions, ``metrics/seg.json``, plots and a report."""
    seg = cfg.seg
    folds = folds_of(load_splits(cfg.paths.splits), "task1", seg.split, seg.folds)
    model_root = Path(cfg.paths.models) / "seg"
    pred_root = Path(cfg.paths.predictions) / "seg"
    with io.atomic_dir(pred_root, "crossval seg") as tmp:
        projections = _predict(cfg, folds, tmp)
    # the registered variant: the folds' final weights (as training recorded them), post-processed
    finals = {trained_checkpoint(model_root / name).stem for name, _, _ in folds}
    result = _score(pred_root, "swa_pp" if finals == {"swa"} else "best_pp")
    result = common_keys(result, seg.split) | result
    metrics_file = Path(cfg.paths.metrics) / "seg.json"
    io.write_json(metrics_file, result)
    patients = json.loads((pred_root / result["chosen"] / "metrics.json").read_text())["patients"]
    dsc = {p: v["GTVp_DSC"] for p, v in patients.items() if p in projections}
    shown = reports.spread(
        {p: np.nan if v is None else v for p, v in dsc.items()}, seg.figure_cases
    )
    figure = figures.mip_figure([(f"{p} ({place}, GTVp DSC {dsc[p]:.2f})", *projections[p])
                                 for p, place in shown])  # fmt: skip
    plots = Path(cfg.paths.plots) / "seg"
    plots.mkdir(parents=True, exist_ok=True)
    with io.atomic_path(plots / "mip.png") as tmp_png:
        figure.savefig(tmp_png, dpi=90, format="png")
    io.write_text(Path(cfg.paths.reports) / "seg.md", render_report(result, seg))
    if track:
        experiment = tracking.experiment("hecktor-seg", cfg.paths.mlruns)
        with tracking.run(
            experiment, "evaluate_seg", tracking.evaluation_tags(cfg, seg.split, metrics_file)
        ) as run:
            for variant, values in result["variants"].items():
                run.log_metrics({f"{variant}_{k}": v for k, v in values.items()})
            run.log_figure(figure, "mip.png")
            run.log_dict(result, "seg.json")
    plt.close(figure)
    for label in (result["chosen"], "baseline"):
        values = {k: round(v, 4) for k, v in result["variants"][label].items()}
        log.info("Task 1 (%s): %s", label, values)
    return result
