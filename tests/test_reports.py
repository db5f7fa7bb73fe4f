"""The pipeline report's headline table, built from every task's metrics JSON."""

import math

from hecktor.reports import headline_row, headline_rows, pipeline_report

TITLES = {"seg": "Task 1: segmentation", "hpv": "Task 3: HPV status"}


def _metrics():
    return {
        "hpv": {"headline": [headline_row("cv balanced accuracy", 0.6, 0.5, None, "network")]},
        "seg": {
            "headline": [
                headline_row("hold-out score", 0.7, 0.4, None, "network"),
                headline_row("hold-out GTVp_DSC", None, 0.6, None, ""),
            ]
        },
    }


def test_headline_rows_follow_the_tasks_order_and_read_nulls_as_nan():
    rows = headline_rows(_metrics(), TITLES)
    assert [(r["task"], r["figure"]) for r in rows] == [
        ("Task 1: segmentation", "hold-out score"),
        ("Task 1: segmentation", "hold-out GTVp_DSC"),
        ("Task 3: HPV status", "cv balanced accuracy"),
    ]
    assert math.isnan(rows[1]["network"]) and math.isnan(rows[0]["oracle"])
    assert headline_rows({"seg": None}, TITLES) == []


def test_the_pipeline_report_shows_each_task_under_its_title():
    page = pipeline_report(_metrics(), {"seg": "# Task 1\\n\\ntext"}, {}, TITLES)
    assert "| Task 1: segmentation | hold-out score | 0.700 | 0.400 | n/a | network |" in page
    assert "| Task 3: HPV status | cv balanced accuracy | 0.600 |" in page
    assert "## Task 1" in page  # a task's own report nests one level down
