"""How much the demo's headline figures move under numeric noise: precision and seed.

Trains and scores every task of a profile (default: demo) the way `dvc repro` does, with the
params as written (``--tuned``: with the values in ``tuned/`` over them), once per precision and
seed, each run in its own folder, and prints one row per run and the spread (max - min) of each
headline figure:

    Task 1 hold-out GTVp DSC, GTVn DSCagg, GTVn F1agg (the registered variant) and whether the
    network beats the PET-threshold baseline on all three; Task 3 cross-validated balanced
    accuracy; Task 2 cross-validated C-index (network trained on predicted inputs).

    python benchmarks/numerics.py [--profile demo] [--precisions fp32 bf16] [--seeds 2025 2026]
        [--out numerics-runs] [--json numerics.json]

It reads the prepared data and splits of the pipeline (`dvc repro split` first) and writes nothing
else. Four runs of the demo take about 35 minutes on 2 CPU cores. "bf16" forces bf16 autocast (the
run still falls back to fp32 where a step goes non-finite: the table says so); "fp32" forces fp32.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import pandas as pd

from hecktor.checkpoints import load_checkpoint
from hecktor.config import Config, apply_tuned, load_config, override
from hecktor.crossval.hpv import crossval_hpv
from hecktor.crossval.rfs import crossval_rfs
from hecktor.crossval.seg import crossval_seg
from hecktor.derive import derive_rfs_inputs
from hecktor.reports import markdown_table
from hecktor.training.workflow import train

FIGURES = ("GTVp_DSC", "GTVn_DSCagg", "GTVn_F1agg", "hpv_cv_BA", "rfs_cv_C")


def run_config(cfg: Config, precision: str, seed: int, root: Path) -> Config:
    """``cfg`` training in ``precision`` with ``seed``, writing every output under ``root``."""
    outputs = ("models", "predictions", "metrics", "plots", "reports", "mlruns", "studies")
    paths = override(cfg.paths, **{name: root / name for name in outputs})
    sections = {
        task: override(
            getattr(cfg, task),
            train=override(getattr(cfg, task).train, precision=precision, seed=seed),
        )
        for task in ("seg", "hpv", "rfs")
    }
    return override(cfg, paths=paths, **sections)


def precisions_used(resume: Path) -> str:
    """The precision each task ended in, e.g. ``seg bf16, hpv bf16, rfs fp32 (fallback)``."""
    out = []
    for task in ("seg", "hpv", "rfs"):
        used = set()
        for last in sorted((resume / task).glob("*/last.pt")):
            precision = load_checkpoint(last).get("precision", {})
            used.add(
                precision.get("used", "?") + (" (fallback)" if precision.get("fallback") else "")
            )
        out.append(f"{task} {'/'.join(sorted(used))}")
    return ", ".join(out)


def one_run(cfg: Config, tasks: tuple[str, ...] = ("seg", "hpv", "rfs")) -> dict:
    """Headline figures of ``tasks`` (in pipeline order: Task 3 and Task 2 need Task 1's models)."""
    start = time.perf_counter()
    row: dict = {}
    train(cfg, "seg", track=False)
    seg = crossval_seg(cfg, track=False)
    network, baseline = seg["variants"][seg["chosen"]], seg["variants"]["baseline"]
    row |= {k: network[k] for k in FIGURES[:3]}
    row["beats_baseline"] = all(network[k] > baseline[k] for k in FIGURES[:3])
    row["baseline"] = {k: baseline[k] for k in FIGURES[:3]}
    if "hpv" in tasks or "rfs" in tasks:
        train(cfg, "hpv", track=False)
        row["hpv_cv_BA"] = crossval_hpv(cfg, track=False)["network"]["cv"]["balanced_accuracy"]
    if "rfs" in tasks:
        derive_rfs_inputs(cfg)
        train(cfg, "rfs", track=False)
        rfs = crossval_rfs(cfg, track=False)
        mode = "pred" if "pred" in rfs["network"] else next(iter(rfs["network"]))
        row["rfs_cv_C"] = rfs["network"][mode]["cv"]["c_index"]
    row["used"] = precisions_used(Path(cfg.paths.mlruns) / "resume")
    row["minutes"] = round((time.perf_counter() - start) / 60, 1)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="demo")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[2025, 2026])
    parser.add_argument("--out", default="numerics-runs", help="scratch folder for the runs")
    parser.add_argument("--json", help="also write the rows here")
    parser.add_argument("--tasks", nargs="+", default=["seg", "hpv", "rfs"],
                        choices=["seg", "hpv", "rfs"],
                        help="stop after these tasks (Task 3 and 2 need Task 1's models)")  # fmt: skip
    parser.add_argument("--tuned", action="store_true",
                        help="apply the tuned values in tuned/ (default: the params as written)")  # fmt: skip
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    cfg = load_config(args.params, args.profile)
    cfg = apply_tuned(cfg) if args.tuned else cfg
    rows = []
    for precision in args.precisions:
        for seed in args.seeds:
            root = Path(args.out) / f"{precision}-{seed}"
            result = one_run(run_config(cfg, precision, seed, root), tuple(args.tasks))
            rows.append({"precision": precision, "seed": seed, **result})
            print(json.dumps(rows[-1]), flush=True)
    table = pd.DataFrame(rows)
    figures = [k for k in FIGURES if k in table]
    columns = ["precision", "seed", *figures, "beats_baseline", "minutes", "used"]
    print("\n" + markdown_table(rows, columns))
    spread = {k: float(table[k].max() - table[k].min()) for k in figures}
    print("\nspread (max - min): " + ", ".join(f"{k} {v:.3f}" for k, v in spread.items()))
    print(
        "range: " + ", ".join(f"{k} {table[k].min():.3f} to {table[k].max():.3f}" for k in figures)
    )
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "spread": spread}, indent=1))


if __name__ == "__main__":
    main()
