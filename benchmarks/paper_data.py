"""The paper profile's data path on this machine: a synthetic paper-scale cohort prepared, stored
and read the way training reads it, on one core.

Synthesises ``--patients`` patients of the ``paper`` profile, prepares them, and prints per task:
prepare seconds per case, stored MB per prepared case (and per raw case), seconds per training
sample on one core (median and 90th percentile, cold: the case's files dropped from the page cache
first; warm: read again), peak memory of this process, and how many loader workers keep a GPU step
of ``--gpu-step`` seconds fed (``ceil(batch x p90 warm / step)``; Task 2: ``--rfs-step``, its
step on the whole 1 mm volume, an upper bound for the smaller grids). Task 1 and Task 3 samples are
the real dataset (a random patch of a prepared case), with the augmentation in the loader
(``augment.where: workers``) or left to the device (``device``: the loader only reads the region);
the augmentation's own cost on one CPU core is a row too. A Task 2 sample is what its dataset
reads (CT, PET and the two mask channels) on the input grids measured: the paper's whole volume
at 1 mm, 2 mm blocks (``rfs.input_pool``), a box around the lesions (``rfs.input_box_mm``).

    python benchmarks/paper_data.py [--patients 6] [--samples 12] [--gpu-step 0.273] [--rfs-step 0.381]
        [--work DIR] [--params params.yaml]

About 3 GB of memory for synthesis and 0.2 GB of disk per patient in ``--work`` (a temporary
folder, removed, unless given).
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import tempfile
import time
from functools import partial
from pathlib import Path

import blosc2
import numpy as np
import torch
from torch.utils.data import default_collate as collate

from hecktor.config import Config, RfsConfig, load_config, override
from hecktor.data.loading import PreparedDataset, augment_batch
from hecktor.data.preprocess import StoredCase, prepare_release, prepared_grid
from hecktor.data.synthetic import synthesize
from hecktor.networks import rfs_input
from hecktor.reports import markdown_table
from hecktor.tasks.seg import SegmentationTask


def drop_cached(folder: Path) -> None:
    """Ask the kernel to drop a folder's file pages (a cold read without root rights)."""
    for path in folder.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def timed(read, patients: list[str], prepared: Path, samples: int) -> dict[str, float]:
    """Median and 90th percentile seconds of ``read(patient)``, cold and warm."""
    cold, warm = [], []
    for i in range(samples):
        patient = patients[i % len(patients)]
        drop_cached(prepared / patient)
        start = time.perf_counter()
        read(patient)
        cold.append(time.perf_counter() - start)
        start = time.perf_counter()
        read(patient)
        warm.append(time.perf_counter() - start)
    return {
        "cold median": float(np.median(cold)), "cold p90": float(np.percentile(cold, 90)),
        "warm median": float(np.median(warm)), "warm p90": float(np.percentile(warm, 90)),
    }  # fmt: skip


def folder_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def seg_dataset(cfg: Config, prepared: Path, patients: list[str], where: str) -> PreparedDataset:
    """Task 1's training dataset with the augmentation ``where`` it says (loader or device)."""
    augment = override(cfg.seg.augment, where=where)
    dataset = SegmentationTask(override(cfg.seg, augment=augment), prepared).train_dataset(patients)
    dataset.transform.set_random_state(0)  # type: ignore[union-attr]
    if dataset.device_transform is not None:
        dataset.device_transform.set_random_state(1)  # type: ignore[attr-defined]
    return dataset  # type: ignore[return-value]


def task2_grids(cfg: Config) -> list[tuple[str, RfsConfig]]:
    """Task 2's input grid as the profile sets it, and the alternatives measured beside it."""
    grids = {(1, None): "1 mm, whole volume (the paper)", (2, None): "2 mm, whole volume",
             (1, (160.0, 160.0, 160.0)): "1 mm, 160 mm box around the lesions",
             (2, (160.0, 160.0, 160.0)): "2 mm, 160 mm box around the lesions"}  # fmt: skip
    rows = []
    for (pool, box), name in grids.items():
        mine = (pool, box) == (cfg.rfs.input_pool, cfg.rfs.input_box_mm)
        rfs = override(cfg.rfs, input_pool=pool, input_box_mm=box)
        rows.append((name + (" (the profile's)" if mine else ""), rfs))
    return rows


def task2_input(rfs: RfsConfig, prepared: Path, spacing, patient: str) -> np.ndarray:
    """What Task 2's dataset reads of a patient (true mask: the benchmark derives no predictions)."""
    case = StoredCase(prepared / patient)
    return rfs_input(rfs, case.whole_label(), spacing, lambda box: case.read(box, np.float16)[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--patients", type=int, default=6)
    parser.add_argument("--samples", type=int, default=12, help="timed samples per task")
    parser.add_argument(
        "--rfs-step",
        type=float,
        default=0.381,
        help="seconds per Task 2 training step on the GPU (README, GPU section)",
    )
    parser.add_argument("--gpu-step", type=float, default=0.273,
                        help="seconds per Task 1 training step on the GPU (README, GPU section)")  # fmt: skip
    parser.add_argument("--work", help="folder for the release and prepared data (kept)")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    torch.set_num_threads(1)
    blosc2.set_nthreads(1)  # one core: as in a loader worker (hecktor.data.loading.init_worker)
    cpu = torch.device("cpu")
    cfg = load_config(args.params, "paper")
    with tempfile.TemporaryDirectory(prefix="paper-data-") as tmp:
        work = Path(args.work or tmp)
        start = time.perf_counter()
        synthesize(override(cfg.synth, patients=args.patients, workers=1), work / "release",
                   work / "oracle.csv")  # fmt: skip
        synth_s = time.perf_counter() - start
        start = time.perf_counter()
        index = prepare_release(
            work / "release", work / "prepared", override(cfg.prepare, workers=1)
        )
        prepare_s = (time.perf_counter() - start) / len(index)
        prepared = work / "prepared"
        patients = list(index["PatientID"])
        labelled = list(index.loc[index["has_label"], "PatientID"])
        stored = [folder_mb(prepared / pid) for pid in patients]
        raw = folder_mb(work / "release") / len(patients)
        spacing, _ = prepared_grid(prepared)
        in_loader, on_device = (
            seg_dataset(cfg, prepared, labelled, where) for where in ("workers", "device")
        )
        regions = {}  # the region each timed read gave, for the augmentation row
        position = {pid: i for i, pid in enumerate(labelled)}

        def region(patient: str) -> None:
            regions[patient] = on_device[position[patient]]

        def augment(patient: str) -> None:
            augment_batch(on_device.device_transform, collate([regions[patient]]), cpu)

        rows = []
        for task, batch, read, step in (
            ("Task 1/3 patch, augmented in the loader", cfg.seg.train.batch_size,
             lambda p: in_loader[position[p]], args.gpu_step),
            ("Task 1/3 region, augmented on the device", cfg.seg.train.batch_size, region,
             args.gpu_step),
            ("(augmentation of a region, one CPU core)", cfg.seg.train.batch_size, augment,
             args.gpu_step),
            *((f"Task 2 input, {name}", cfg.rfs.train.batch_size,
               partial(task2_input, rfs, prepared, spacing), args.rfs_step)
              for name, rfs in task2_grids(cfg)),
        ):  # fmt: skip
            times = timed(read, labelled, prepared, args.samples)
            rows.append({"task": task, **times,
                         "workers": math.ceil(batch * times["warm p90"] / step)})  # fmt: skip
        rows[2]["workers"] = "-"  # on the GPU, not in the loader
        peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
        seg = SegmentationTask(cfg.seg, prepared)
    print(f"{len(patients)} paper-profile patients, volume {seg.shape}, patch {seg.patch}, one core; "
          f"synthesis {synth_s:.1f} s, prepare {prepare_s:.1f} s per case, stored "
          f"{np.mean(stored):.1f} MB per case (max {max(stored):.1f}), peak memory {peak_gb:.1f} GB")  # fmt: skip
    print(f"full release of 1,200 patients: {1200 * np.mean(stored) / 1e3:.0f} GB prepared, stored "
          "once (DVC's cache links it); the raw release is read in place (a stage dependency, not "
          f"cached): {raw:.0f} MB per synthetic raw case")  # fmt: skip
    print(markdown_table(rows, ["task", "cold median", "cold p90", "warm median", "warm p90",
                                "workers"]))  # fmt: skip
    print(
        f"workers: loader processes that keep a {args.gpu_step} s GPU step (Task 2: "
        f"{args.rfs_step} s) fed at the "
        "paper's batch sizes (per GPU)"
    )


if __name__ == "__main__":
    main()
