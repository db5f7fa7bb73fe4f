"""What the scoring stages and the report draw for trained tiny models: pictures where people
would rather look than read, and tables, never Python reprs."""

from __future__ import annotations

import re

import pytest

from hecktor.reports import write_pipeline_report
from hecktor.tasks import TASKS

pytestmark = pytest.mark.slow


def test_the_reports_show_pictures_and_tables(trained_cfg):
    plots = trained_cfg.paths.plots
    for picture in ("seg/mip.png", "hpv/roc.png", "hpv/confusion.png", "rfs/km.png"):
        assert (plots / picture).read_bytes()[:4] == b"\x89PNG", picture
    index = write_pipeline_report(trained_cfg, {n: s.title for n, s in TASKS.items()})
    for task in TASKS:
        assert (plots / task / "curves.png").read_bytes()[:4] == b"\x89PNG"
        assert f"](../plots/{task}/curves.png)" in index.read_text()
    for page in trained_cfg.paths.reports.glob("*.md"):
        text = page.read_text()
        assert not re.search(r"\{'[^']*': ", text), f"{page.name} prints a Python dict"
    hpv = (trained_cfg.paths.reports / "hpv.md").read_text()
    assert "| cross-validation |" in hpv and "](../plots/hpv/roc.png)" in hpv
    seg = (trained_cfg.paths.reports / "seg.md").read_text()
    assert "best, median and worst" in seg
