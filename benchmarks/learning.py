"""Do the networks learn? Every task trained as the pipeline trains it, on a synthetic cohort large
enough for its signal to be measured, against its baselines and the oracle, with intervals.

A fresh cohort of the ``learning`` profile (several hundred patients on the demo's grid and with
the demo's training recipe) is synthesised, prepared and split into folds under ``--out``; then
Task 1 (hold-out), Task 3 and Task 2 (k-fold, out-of-fold predictions pooled over all folds, Task 2
on predicted masks and HPV status) are trained and scored by the pipeline's own code. It prints one
table per task: the network, its baselines and the oracle, each with a 95 % bootstrap interval, the
difference to the baseline with its paired interval and what the intervals allow one to say; then
the targets below, met or not, and how long each step took. Learning curves (training loss and
validation figure per epoch and fold) go to ``--figures``.

    python benchmarks/learning.py [--profile learning] [--out learning-runs]
        [--figures docs/learning] [--json learning.json] [--precision fp32]

About 30 minutes on 2 CPU cores in fp32 (README, "Do the networks learn?"). Targets:
Task 1 ahead of the PET threshold on GTVp DSC, GTVn DSCagg and GTVn F1agg; Task 3 out-of-fold AUC
0.75 or more and not behind the clinical logistic regression; Task 2 out-of-fold C-index 0.65 or
more and not behind the clinical + image Cox model.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from hecktor import comparison, reports
from hecktor.config import Config, load_config, override
from hecktor.crossval.hpv import crossval_hpv
from hecktor.crossval.rfs import BASELINE_NAMES, crossval_rfs
from hecktor.crossval.seg import crossval_seg
from hecktor.data.preprocess import prepare_release
from hecktor.data.splits import write_splits
from hecktor.data.synthetic import synthesize
from hecktor.derive import derive_rfs_inputs
from hecktor.figures import save_figure
from hecktor.training.workflow import train

OUTPUTS = ("synthetic", "prepared", "models", "predictions", "metrics", "plots", "reports",
           "mlruns", "studies", "tuned")  # fmt: skip
CURVES = {"seg": "val_score", "hpv": "val_auc", "rfs": "val_c_index"}


def benchmark_config(cfg: Config, root: Path, precision: str | None) -> Config:
    """``cfg`` reading and writing everything under ``root`` (nothing of the project's own)."""
    paths = override(
        cfg.paths,
        **{name: root / name for name in OUTPUTS},
        release=root / "synthetic",
        oracle=root / "oracle.csv",
        splits=root / "splits.json",
    )
    if precision is None:
        return override(cfg, paths=paths)
    sections = {t: override(getattr(cfg, t), train=override(getattr(cfg, t).train, precision=precision))
                for t in ("seg", "hpv", "rfs")}  # fmt: skip
    return override(cfg, paths=paths, **sections)


def timed(timings: dict[str, float], name: str, step: Callable[[], object]) -> object:
    start = time.perf_counter()
    result = step()
    timings[name] = round((time.perf_counter() - start) / 60, 1)
    print(f"{name}: {timings[name]} min", flush=True)
    return result


def row(figure: str, compared: dict, baseline: str, oracle: float | None = None) -> dict:
    return {"figure": figure, "against": baseline, **reports.comparison_cells(compared),
            "oracle": comparison.interval_text(oracle, None)}  # fmt: skip


def seg_rows(result: dict) -> list[dict]:
    return [row(k, result["comparison"][k], "PET threshold")
            for k in ("GTVp_DSC", "GTVn_DSCagg", "GTVn_F1agg")]  # fmt: skip


def hpv_rows(result: dict) -> list[dict]:
    oracle = result["oracle"] or {}
    return [row(f"{split} {name}", result["comparison"][f"{split}_{name}"], "clinical logistic",
                oracle.get("cv" if split == "cv" else "test", {}).get(name))
            for split in ("cv", "test_ensemble") for name in ("auc", "balanced_accuracy")
            if f"{split}_{name}" in result["comparison"]]  # fmt: skip


def rfs_rows(result: dict) -> list[dict]:
    oracle = result.get("oracle", {})
    return [row(f"{split} C-index", compared, BASELINE_NAMES[name],
                oracle.get("cv" if split == "cv" else "test", {}).get("c_index"))
            for split, against in result["comparison"].items()
            for name, compared in against.items()]  # fmt: skip


def targets(seg: dict, hpv: dict, rfs: dict) -> list[dict]:
    """The figures the networks are held to, each met or not."""
    ahead = all(seg["comparison"][k]["verdict"].startswith(comparison.NETWORK_AHEAD)
                for k in ("GTVp_DSC", "GTVn_DSCagg", "GTVn_F1agg"))  # fmt: skip
    auc = hpv["comparison"]["cv_auc"]
    c_index = rfs["comparison"]["cv"]["baseline_clinical_image"]
    return [
        {"target": "Task 1 ahead of the PET threshold on all three metrics", "met": ahead},
        {"target": "Task 3 out-of-fold AUC >= 0.75", "met": auc["network"] >= 0.75,
         "figure": auc["network"]},
        {"target": "Task 3 not behind the clinical logistic regression",
         "met": not auc["verdict"].startswith(comparison.BASELINE_AHEAD)},
        {"target": "Task 2 out-of-fold C-index >= 0.65", "met": c_index["network"] >= 0.65,
         "figure": c_index["network"]},
        {"target": "Task 2 not behind the clinical + image Cox model",
         "met": not c_index["verdict"].startswith(comparison.BASELINE_AHEAD)},
    ]  # fmt: skip


def curves(cfg: Config, figures: Path) -> dict[str, str]:
    """Training loss and the validation figure per epoch, one line per fold, per task."""
    written = {}
    for task, column in CURVES.items():
        history = Path(cfg.paths.plots) / task / "history.csv"
        if not history.is_file():
            continue
        frame = pd.read_csv(history)
        shown = [c for c in ("train_loss", column) if c in frame]
        figure = reports.curves_figure(frame, shown, f"{task}: training loss and {column}")
        written[task] = str(save_figure(figure, figures / f"{task}.png"))
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--profile", default="learning")
    parser.add_argument("--out", default="learning-runs", help="scratch folder for the run")
    parser.add_argument("--figures", default="docs/learning", help="where the curves go")
    parser.add_argument("--json", help="also write the tables here")
    parser.add_argument("--precision", choices=["auto", "bf16", "fp32"],
                        help="force every task's precision (default: the profile's)")  # fmt: skip
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    root = Path(args.out)
    if root.exists():
        raise SystemExit(f"{root} exists: give a new --out (this benchmark starts from nothing)")
    cfg = benchmark_config(load_config(args.params, args.profile), root, args.precision)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    timed(timings, "synth", lambda: synthesize(cfg.synth, cfg.paths.synthetic, cfg.paths.oracle))
    timed(
        timings,
        "prepare",
        lambda: prepare_release(cfg.paths.release, cfg.paths.prepared, cfg.prepare),
    )
    write_splits(cfg.paths.prepared, cfg.paths.splits, cfg.split)
    timed(timings, "train seg", lambda: train(cfg, "seg", track=False))
    seg = timed(timings, "score seg", lambda: crossval_seg(cfg, track=False))
    timed(timings, "train hpv", lambda: train(cfg, "hpv", track=False))
    hpv = timed(timings, "score hpv", lambda: crossval_hpv(cfg, track=False))
    timed(timings, "derive rfs", lambda: derive_rfs_inputs(cfg))
    timed(timings, "train rfs", lambda: train(cfg, "rfs", track=False))
    rfs = timed(timings, "score rfs", lambda: crossval_rfs(cfg, track=False))
    timings["total"] = round((time.perf_counter() - start) / 60, 1)
    tables = {"Task 1 (hold-out)": seg_rows(seg), "Task 3 (out of fold)": hpv_rows(hpv),
              "Task 2 (out of fold, predicted inputs)": rfs_rows(rfs)}  # fmt: skip
    columns = ["figure", "network", "against", "baseline", "difference", "oracle", "verdict"]
    for title, rows in tables.items():
        print(f"\n{title}\n\n{reports.markdown_table(rows, columns)}")
    met = targets(seg, hpv, rfs)
    print("\n" + reports.markdown_table(met, ["target", "met", "figure"]))
    print("\nminutes: " + ", ".join(f"{k} {v}" for k, v in timings.items()))
    drawn = curves(cfg, Path(args.figures))
    print("curves: " + ", ".join(drawn.values()))
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"tables": tables, "targets": met, "minutes": timings,
             "patients": cfg.synth.patients, "profile": args.profile}, indent=1, default=str))  # fmt: skip


if __name__ == "__main__":
    main()
