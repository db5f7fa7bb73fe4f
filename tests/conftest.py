"""Shared fixtures: a tiny synthetic release and its prepared form, made once per session."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from hecktor.config import PrepareConfig, SplitConfig, SynthConfig, load_config
from hecktor.tasks.seg import SegmentationTask

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_config():
    return load_config(ROOT / "params.yaml", profile="tiny")


@pytest.fixture(scope="session")
def synth_cfg(tiny_config) -> SynthConfig:
    return tiny_config.synth.model_copy(update={"patients": 8})


@pytest.fixture(scope="session")
def prepare_cfg(tiny_config) -> PrepareConfig:
    return tiny_config.prepare.model_copy(update={"workers": 1})


@pytest.fixture(scope="session")
def split_cfg(tiny_config) -> SplitConfig:
    return tiny_config.split


@pytest.fixture(scope="session")
def release_dir(tmp_path_factory, synth_cfg) -> Path:
    """A tiny synthetic release (8 patients, 3 centres), read-only by convention."""
    from hecktor.data.synthetic import synthesize

    out = tmp_path_factory.mktemp("release") / "hecktor2025_training"
    synthesize(synth_cfg, out, out.parent / "oracle.csv")
    return out


@pytest.fixture
def release_copy(tmp_path, release_dir) -> Path:
    """A private copy of the tiny release, free to break."""
    dst = tmp_path / "release"
    shutil.copytree(release_dir, dst)
    return dst


@pytest.fixture(scope="session")
def prepared_dir(tmp_path_factory, release_dir, prepare_cfg) -> Path:
    from hecktor.data.preprocess import prepare_release

    out = tmp_path_factory.mktemp("prepared") / "prepared"
    prepare_release(release_dir, out, prepare_cfg)
    return out


def make_image(
    array: np.ndarray, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=None
) -> sitk.Image:
    """An image from a (Z, Y, X) array with the given geometry."""
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetOrigin(tuple(float(o) for o in origin))
    if direction is not None:
        image.SetDirection(tuple(float(d) for d in np.asarray(direction).ravel()))
    return image


def scratch_config(tiny_config, release_dir, prepared_dir, split_cfg, root: Path):
    """The tiny config reading the shared release and prepared data, writing under ``root``."""
    from hecktor.config import override
    from hecktor.data.splits import write_splits

    outputs = ("models", "predictions", "metrics", "plots", "reports", "mlruns", "studies", "tuned")
    paths = override(
        tiny_config.paths,
        release=release_dir,
        oracle=release_dir.parent / "oracle.csv",
        prepared=prepared_dir,
        splits=root / "splits.json",
        **{name: root / name for name in outputs},
    )
    write_splits(prepared_dir, paths.splits, split_cfg)
    return override(tiny_config, paths=paths)


@pytest.fixture
def project_cfg(tmp_path, tiny_config, release_dir, prepared_dir, split_cfg):
    """A tiny-profile config whose outputs go to a temporary folder (inputs shared, read-only)."""
    return scratch_config(tiny_config, release_dir, prepared_dir, split_cfg, tmp_path)


class _Poison(torch.autograd.Function):
    """Identity forward; a NaN gradient backward when told to: a faulty kernel, made to order."""

    @staticmethod
    def forward(ctx, x, poisoned: bool):
        ctx.poisoned = poisoned
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return (grad * float("nan") if ctx.poisoned else grad), None


class PoisonedSegmentation(SegmentationTask):
    """Task 1 whose gradients are NaN under reduced precision (as a faulty bf16 kernel's were on
    some CPUs), or always when ``always`` is set. Its losses stay finite."""

    always = False

    def loss(self, model, batch, device):
        loss = super().loss(model, batch, device)
        return _Poison.apply(loss, self.always or torch.is_autocast_enabled(device.type))
