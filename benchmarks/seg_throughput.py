"""Task 1 speed on this machine: training samples/s and sliding-window s/case, fp32 against bf16.

Uses the network, patch and volume size of a profile (default: demo) on random inputs, so it needs
no data. Also reports how far bf16 predictions are from fp32 ones (Dice of the label maps), since a
speed-up is only worth having where it keeps accuracy.

    python benchmarks/seg_throughput.py [--profile demo] [--steps 6] [--cases 3]
        [--checkpoint models/seg/holdout/swa.pt --prepared data/prepared]

With a trained checkpoint and prepared data, inference and the fp32/bf16 agreement use them.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path

import numpy as np
import torch
from monai.losses import DiceCELoss

from hecktor.checkpoints import load_checkpoint
from hecktor.config import load_config
from hecktor.data.preprocess import load_prepared
from hecktor.devices import autocast_for, cpu_supports_bf16
from hecktor.metrics import dice
from hecktor.models.segmentation import build_segmenter, make_plan
from hecktor.prediction import segment


def train_rate(model, patch, batch, steps, autocast) -> float:
    criterion = DiceCELoss(to_onehot_y=True, softmax=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 2, *patch)
    y = torch.randint(0, 3, (batch, 1, *patch))
    model.train()
    for step in range(steps + 1):
        if step == 1:  # the first step warms up kernels and allocators
            start = time.perf_counter()
        optimizer.zero_grad()
        with autocast():
            loss = criterion(model(x).float(), y)
        loss.backward()
        optimizer.step()
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="demo")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--cases", type=int, default=3)
    parser.add_argument("--checkpoint", help="trained weights (e.g. models/seg/holdout/swa.pt)")
    parser.add_argument("--prepared", help="prepared data to segment (e.g. data/prepared)")
    args = parser.parse_args()
    cfg = load_config("params.yaml", args.profile)
    spacing = tuple(reversed(cfg.prepare.spacing_mm))
    shape = tuple(round(c / s) for c, s in zip(reversed(cfg.prepare.crop_mm), spacing, strict=True))
    patch = tuple(min(p, s) for p, s in zip(cfg.seg.patch_size, shape, strict=True))
    torch.manual_seed(0)
    model = build_segmenter(
        make_plan(cfg.seg.network, patch, spacing, cfg.seg.base_filters, cfg.seg.max_filters)
    )
    print(f"profile {args.profile}: patch {patch}, volume {shape}, batch {cfg.seg.train.batch_size}, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, "
          f"{torch.get_num_threads()} threads, bf16 native: {cpu_supports_bf16()}")  # fmt: skip
    volumes = [
        np.random.default_rng(i).normal(size=(2, *shape)).astype(np.float32)
        for i in range(args.cases)
    ]
    if args.prepared:
        patients = sorted(p.name for p in Path(args.prepared).iterdir() if p.is_dir())[: args.cases]
        volumes = [np.array(load_prepared(args.prepared, p).image) for p in patients]
        print(f"segmenting {len(volumes)} prepared cases from {args.prepared}")
    labels = {}
    trained = load_checkpoint(args.checkpoint)["model"] if args.checkpoint else None
    for precision in ("fp32", "bf16"):
        autocast = (
            autocast_for(precision, torch.device("cpu"))
            if precision == "bf16"
            else contextlib.nullcontext
        )
        rate = train_rate(model, patch, cfg.seg.train.batch_size, args.steps, autocast)
        if trained is not None:
            model.load_state_dict(trained)
        model.eval()
        segment(model, volumes[0], patch, overlap=cfg.seg.sw_overlap, autocast=autocast)  # warm-up
        start = time.perf_counter()
        labels[precision] = [
            segment(
                model,
                v,
                patch,
                overlap=cfg.seg.sw_overlap,
                sw_batch_size=cfg.seg.sw_batch_size,
                autocast=autocast,
            )
            for v in volumes
        ]
        per_case = (time.perf_counter() - start) / len(volumes)
        print(f"{precision}: training {rate:.2f} samples/s, sliding window {per_case:.2f} s/case")
    agreement = np.mean(
        [dice(a > 0, b > 0) for a, b in zip(labels["fp32"], labels["bf16"], strict=True)]
    )
    print(f"bf16 vs fp32 label agreement (Dice of foreground): {agreement:.4f}")


if __name__ == "__main__":
    main()
