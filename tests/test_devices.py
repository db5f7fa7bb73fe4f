import torch

from hecktor import devices


def test_precision_resolution():
    cpu = torch.device("cpu")
    assert devices.precision_for("fp32", cpu) == "fp32"
    with devices.autocast_for("bf16", cpu)():
        y = torch.nn.Linear(4, 4)(torch.randn(2, 4))
    assert y.dtype == torch.bfloat16
