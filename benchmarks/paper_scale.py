"""The paper profile's networks at full size on a GPU: time per training step, peak memory, and
sliding-window inference of a whole prepared volume, fp32 (TF32) against bf16 autocast.

Random inputs of the paper's shapes (no data needed): Task 1 DynUNet on 192^3 patches, batch 2;
Task 3 the same network with its head, batch 4; Task 2 3D ResNet18 on the whole 288^3 volume with
4 channels, batch 16 (all from ``params.yaml``'s ``paper`` profile). Tells whether a card holds the
paper's batch sizes and how long ``epochs`` x ``steps`` will take.

    python benchmarks/paper_scale.py [--steps 5] [--profile paper] [--tasks seg hpv rfs]
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss

from hecktor.config import load_config
from hecktor.losses import cox_loss
from hecktor.models.hpv import HPVNet
from hecktor.models.segmentation import build_segmenter, make_plan
from hecktor.models.survival import SurvivalNet

CUDA = torch.cuda.is_available()


def _autocast(precision: str):
    if precision == "bf16":
        return lambda: torch.autocast("cuda" if CUDA else "cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext


def _sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


def _steps(step, steps: int) -> tuple[float, float]:
    """Seconds per step (after one warm-up) and peak GiB (GPU only)."""
    if CUDA:
        torch.cuda.reset_peak_memory_stats()
    step()
    _sync()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync()
    peak = torch.cuda.max_memory_allocated() / 2**30 if CUDA else float("nan")
    return (time.perf_counter() - start) / steps, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="paper")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--tasks", nargs="+", default=["seg", "hpv", "rfs"])
    args = parser.parse_args()
    cfg = load_config("params.yaml", args.profile)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    device = torch.device("cuda" if CUDA else "cpu")
    spacing = tuple(reversed(cfg.prepare.spacing_mm))
    volume = tuple(
        round(c / s) for c, s in zip(reversed(cfg.prepare.crop_mm), spacing, strict=True)
    )
    patch = tuple(min(p, v) for p, v in zip(cfg.seg.patch_size, volume, strict=True))
    name = torch.cuda.get_device_name() if CUDA else "CPU"
    print(f"{name} | torch {torch.__version__} | profile {args.profile}: "
          f"volume {volume}, patch {patch}, spacing {spacing} mm")  # fmt: skip
    print("task | precision | batch | s/step | peak GiB")
    rows = []
    for task in args.tasks:
        for precision in ("fp32", "bf16"):
            autocast = _autocast(precision)
            if CUDA:
                torch.cuda.empty_cache()
            if task in ("seg", "hpv"):
                plan = make_plan(cfg.seg.network, patch, spacing, cfg.seg.base_filters,
                                 cfg.seg.max_filters)  # fmt: skip
                unet = build_segmenter(plan)
                model = (HPVNet(unet, 4, cfg.hpv.mlp_width) if task == "hpv" else unet).to(device)
                batch = cfg.hpv.train.batch_size if task == "hpv" else cfg.seg.train.batch_size
                size = tuple(min(p, v) for p, v in zip(cfg.hpv.patch_size, volume, strict=True))
                x = torch.randn(batch, 2, *(size if task == "hpv" else patch), device=device)
                y = torch.randint(0, 3, (batch, 1, *x.shape[2:]), device=device)
                clinical = torch.randn(batch, 4, device=device)
                target = torch.randint(0, 2, (batch,), device=device).float()
                dice_ce = DiceCELoss(to_onehot_y=True, softmax=True)

                def loss_fn(model=model, x=x, y=y, clinical=clinical, target=target,
                            dice_ce=dice_ce, task=task):  # fmt: skip
                    if task == "seg":
                        return dice_ce(model(x).float(), y)
                    out = model(x, clinical)
                    bce = torch.nn.functional.binary_cross_entropy_with_logits
                    return dice_ce(out.segmentation.float(), y) + bce(out.hpv.float(), target)
            else:
                model = SurvivalNet(11, cfg.rfs.widths, cfg.rfs.mlp_width, cfg.rfs.dropout)
                model = model.to(device)
                batch = cfg.rfs.train.batch_size
                x = torch.randn(batch, 4, *volume, device=device)
                clinical = torch.randn(batch, 11, device=device)
                time_ = torch.rand(batch, device=device) * 60
                event = (torch.rand(batch, device=device) > 0.3).float()

                def loss_fn(model=model, x=x, clinical=clinical, time_=time_, event=event):
                    return cox_loss(model(x, clinical).float(), time_, event)

            optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

            def step(loss_fn=loss_fn, optimizer=optimizer, autocast=autocast):
                optimizer.zero_grad(set_to_none=True)
                with autocast():
                    loss = loss_fn()
                loss.backward()
                optimizer.step()

            try:
                seconds, peak = _steps(step, args.steps)
                line = f"{task} train | {precision} | {batch} | {seconds:.3f} | {peak:.1f}"
            except torch.OutOfMemoryError:
                line = f"{task} train | {precision} | {batch} | out of memory | -"
            print(line, flush=True)
            rows.append(line)
            if task == "seg":
                model.eval()
                image = torch.randn(1, 2, *volume, device=device)

                def infer(model=model, image=image, autocast=autocast):
                    with torch.inference_mode(), autocast():
                        sliding_window_inference(image, list(patch), 2, model, overlap=0.5,
                                                 mode="gaussian", sigma_scale=0.125)  # fmt: skip

                seconds, peak = _steps(infer, 2)
                print(f"seg sliding window {volume} | {precision} | 1 | {seconds:.3f} | {peak:.1f}",
                      flush=True)  # fmt: skip
            del model, optimizer
    print("(s/step after one warm-up step; peak: torch.cuda.max_memory_allocated)")


if __name__ == "__main__":
    main()
