"""Inference speed on this machine: the packaged predictor against plain fp32 MONAI.

For each case of a release: the packaged predictor's whole case (preprocess, segment, HPV, RFS:
what ``hecktor predict`` does per patient) and its segmentation step alone (bf16 autocast where the
CPU supports it, ``inference_mode``, Gaussian sliding window); then the same network through a plain
fp32 ``monai.inferers.sliding_window_inference`` (overlap 0.5, Gaussian) on the same preprocessed
volume. Prints seconds per case and the Dice of both label maps against the truth (GTVp and GTVn,
pooled over the cases, on the preprocessed grid, no post-processing), so a speed-up is only
believed where it keeps accuracy.

    python benchmarks/predict_throughput.py [--models DIR] [--release data/synthetic] [--cases 6]

Models come from ``--models`` (an ``hecktor export`` folder) or the registry's champions.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from monai.inferers import sliding_window_inference

from hecktor.checkpoints import restored
from hecktor.config import load_config
from hecktor.data import layout
from hecktor.data.preprocess import grid_of, preprocess
from hecktor.devices import cpu_supports_bf16
from hecktor.inference.batch import Predictor
from hecktor.inference.sources import load_bundles
from hecktor.metrics import dice
from hecktor.models.segmentation import build_segmenter
from hecktor.networks import plan_of, seg_plan
from hecktor.prediction import segment


def plain_fp32(model, image: np.ndarray, patch) -> np.ndarray:
    x = torch.as_tensor(np.array(image, dtype=np.float32))[None]
    with torch.no_grad():
        logits = sliding_window_inference(x, list(patch), 1, model, overlap=0.5, mode="gaussian")
    return logits.argmax(1)[0].numpy().astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", help="an `hecktor export` folder (default: the registry)")
    parser.add_argument("--release", default="data/synthetic", help="release with Task 1 labels")
    parser.add_argument("--cases", type=int, default=6)
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    cfg = load_config(args.params)
    release = layout.scan_release(args.release)
    cases = release.cases[1][: args.cases]
    with tempfile.TemporaryDirectory() as tmp:
        bundles = load_bundles(cfg.paths.mlruns, Path(tmp) / "cache", args.models)
        predictor = Predictor(bundles)
        bundle = bundles["seg"]
        seg_cfg = bundle.settings("seg")
        spacing, shape = grid_of(bundle.manifest["prepared"])
        state = bundle.weights(bundle.members[0], predictor.device)
        plan = plan_of(state) or seg_plan(seg_cfg, spacing, shape)
        model = restored(build_segmenter(plan), state, predictor.device)
        times = {"packaged, whole case": [], "packaged, segmentation": [], "plain fp32 MONAI": []}
        preds = {"packaged, segmentation": [], "plain fp32 MONAI": []}
        truths = []
        for i, case in enumerate(cases):
            images = layout.read_case(case)
            start = time.perf_counter()
            predictor(images, {})
            whole = time.perf_counter() - start
            prepared = preprocess(images, predictor.prepare)
            start = time.perf_counter()
            packaged = segment(model, prepared.image, plan.patch, overlap=seg_cfg.sw_overlap,
                               sw_batch_size=seg_cfg.sw_batch_size, device=predictor.device,
                               autocast=predictor.autocast)  # fmt: skip
            mid = time.perf_counter()
            plain = plain_fp32(model, prepared.image, plan.patch)
            end = time.perf_counter()
            if i == 0:  # warm-up case: kernels, allocators, caches
                continue
            times["packaged, whole case"].append(whole)
            times["packaged, segmentation"].append(mid - start)
            times["plain fp32 MONAI"].append(end - mid)
            preds["packaged, segmentation"].append(packaged)
            preds["plain fp32 MONAI"].append(plain)
            truths.append(prepared.label)
    print(f"{len(truths)} cases (after one warm-up) of {args.release}, volume "
          f"{tuple(shape)}, patch {tuple(plan.patch)}, {torch.get_num_threads()} "
          f"threads, bf16-capable CPU: {cpu_supports_bf16()}")  # fmt: skip
    truth = np.stack(truths)
    for name, values in times.items():
        line = f"{name:<24} {np.mean(values):6.3f} s/case"
        if name in preds:
            pred = np.stack(preds[name])
            line += f"   GTVp Dice {dice(pred == 1, truth == 1):.4f}"
            line += f"   GTVn Dice {dice(pred == 2, truth == 2):.4f}"
        print(line)
    agree = dice(
        np.stack(preds["packaged, segmentation"]) > 0, np.stack(preds["plain fp32 MONAI"]) > 0
    )
    print(f"agreement of the two label maps (foreground Dice): {agree:.4f}")


if __name__ == "__main__":
    main()
