from pathlib import Path

import pytest
import torch

from hecktor import devices


def test_precision_resolution():
    cpu = torch.device("cpu")
    assert devices.precision_for("fp32", cpu) == "fp32"
    with devices.autocast_for("bf16", cpu)():
        y = torch.nn.Linear(4, 4)(torch.randn(2, 4))
    assert y.dtype == torch.bfloat16


@pytest.mark.skipif(not Path("/proc/cpuinfo").is_file(), reason="reads the CPU flags of Linux")
def test_auto_takes_bf16_exactly_where_the_cpu_has_native_bf16():
    """Checked against the CPU's own flags, not against the code's probe."""
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags |= set(line.split(":", 1)[1].split())
    native = bool(flags & {"avx512_bf16", "amx_bf16"})
    assert devices.cpu_supports_bf16() == native
    assert devices.precision_for("auto", torch.device("cpu")) == ("bf16" if native else "fp32")
