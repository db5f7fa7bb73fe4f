"""The networks' downsampling in numbers, and the config read that checks sizes against it."""

import pytest

from hecktor.config import ConfigError, load_config, resolve
from hecktor.planning import divisor, dynunet_plan
from tests.conftest import ROOT


def test_plan_isotropic():
    kernels, strides = dynunet_plan((40, 40, 40), (3.0, 3.0, 3.0))
    assert strides == [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]]
    assert kernels == [[3, 3, 3]] * 4
    assert divisor(strides) == [8, 8, 8]


def test_plan_paper_patch_has_five_downsamplings():
    _, strides = dynunet_plan((192, 192, 192), (1.0, 1.0, 1.0))
    assert len(strides) == 6 and divisor(strides) == [32, 32, 32]


def test_plan_anisotropic_spacing_skips_the_coarse_axis_first():
    kernels, strides = dynunet_plan((32, 64, 64), (3.0, 1.0, 1.0))
    assert strides[1] == [1, 2, 2] and kernels[0] == [1, 3, 3]


def _raw(seg_patch, hpv_patch, network="dynunet"):
    return {"prepare": {"spacing_mm": [1.0, 1.0, 1.0], "crop_mm": [64.0, 64.0, 64.0]},
            "seg": {"network": network, "patch_size": seg_patch},
            "hpv": {"patch_size": hpv_patch}}  # fmt: skip


def test_a_patch_the_network_cannot_downsample_fails_when_the_params_are_read():
    resolve(_raw([40, 40, 32], [32, 32, 32]))
    with pytest.raises(
        ConfigError, match=r"seg.patch_size .*\(40, 40, 36\) must be divisible by \(8, 8, 8\)"
    ):
        resolve(_raw([40, 40, 36], [32, 32, 32]))
    with pytest.raises(ConfigError, match=r"hpv.patch_size .*\(36, 32, 32\) must be divisible"):
        resolve(_raw([32, 32, 32], [36, 32, 32]))
    with pytest.raises(ConfigError, match=r"by \(8, 8, 8\) \(the segresnet plan"):
        resolve(_raw([20, 16, 16], [16, 16, 16], "segresnet"))


def test_the_shipped_profiles_fit_their_networks():
    for profile in ("tiny", "demo", "paper"):
        load_config(ROOT / "params.yaml", profile)
