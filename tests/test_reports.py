"""The pipeline report's headline table, built from every task's metrics JSON."""

import numpy as np

from hecktor import reports
from hecktor.reports import headline_row, headline_rows, pipeline_report

TITLES = {"seg": "Task 1: segmentation", "hpv": "Task 3: HPV status"}


def _compared(network, baseline, verdict, interval=None):
    return {"network": network, "baseline": baseline, "network_ci": interval,
            "baseline_ci": interval, "difference_ci": interval, "verdict": verdict}  # fmt: skip


def _metrics():
    return {
        "hpv": {"headline": [headline_row("cv balanced accuracy",
                                          _compared(0.6, 0.5, "network ahead"), None)]},
        "seg": {
            "headline": [
                headline_row("hold-out score", _compared(0.7, 0.4, "network ahead",
                                                         [0.61, 0.79]), None),
                headline_row("hold-out GTVp_DSC", _compared(None, 0.6, "n/a", [None, None]), None),
            ]
        },
    }  # fmt: skip


def test_headline_rows_follow_the_tasks_order_and_print_missing_figures_as_na():
    rows = headline_rows(_metrics(), TITLES)
    assert [(r["task"], r["figure"]) for r in rows] == [
        ("Task 1: segmentation", "hold-out score"),
        ("Task 1: segmentation", "hold-out GTVp_DSC"),
        ("Task 3: HPV status", "cv balanced accuracy"),
    ]
    assert rows[1]["network"] == "n/a" and rows[0]["oracle"] == "n/a"
    assert rows[1]["baseline"] == "0.600"  # an interval of NaN, read back from JSON as nulls
    assert rows[1]["difference"] == "n/a"
    assert headline_rows({"seg": None}, TITLES) == []


def test_the_pipeline_report_shows_each_figure_with_its_interval_and_the_verdict():
    page = pipeline_report(_metrics(), {"seg": "# Task 1\n\ntext"}, {}, TITLES)
    assert (
        "| Task 1: segmentation | hold-out score | 0.700 [0.61, 0.79] | 0.400 [0.61, 0.79] "
        "| 0.300 [0.61, 0.79] | n/a | network ahead |"
    ) in page
    assert "| Task 3: HPV status | cv balanced accuracy | 0.600 | 0.500 | 0.100 |" in page
    assert "## Task 1" in page  # a task's own report nests one level down


def test_the_summary_holds_each_headline_figure_beside_its_baseline_and_the_verdict():
    row = reports.headline_row("hold-out GTVp_DSC", _compared(0.7, 0.6, "network ahead"), None)
    metrics = {"seg": {"headline": [row], "patients": {"a": {"GTVp_DSC": 1.0}}}, "hpv": None}
    assert reports.summary(metrics) == {
        "seg": {"hold-out GTVp_DSC": {"network": 0.7, "baseline": 0.6, "verdict": "network ahead"}}
    }


def test_the_mip_cases_run_from_the_best_to_the_worst():
    dsc = {"a": 0.9, "b": 0.1, "c": 0.5, "d": float("nan"), "e": 0.7, "f": 0.3}
    assert reports.spread(dsc, 3) == [("a", "best"), ("c", "median"), ("b", "worst")]
    assert reports.spread(dsc, 2) == [("a", "best"), ("b", "worst")]
    assert reports.spread({"a": 0.5}, 3) == [("a", "best")]
    twenty = {f"p{i:02d}": 1 - i / 20 for i in range(20)}  # an even count: the upper median
    assert [place for _, place in reports.spread(twenty, 3)] == ["best", "median", "worst"]
    assert reports.spread(dsc, 0) == [] and reports.spread({"d": float("nan")}, 3) == []


def test_training_curves_show_the_loss_and_each_validation_metric():
    assert reports.curve_columns(["fold", "epoch", "train_loss", "skipped_steps", "val_auc",
                                  "val_balanced_accuracy", "val_score"]) == [
        "train_loss", "val_auc", "val_balanced_accuracy"]  # fmt: skip
    assert reports.curve_columns(["fold", "epoch", "train_loss", "val_score"]) == [
        "train_loss", "val_score"]  # fmt: skip


def test_roc_and_confusion_figures_carry_their_numbers():
    truth = np.array([0, 0, 1, 1, 1, 0])
    score = np.array([0.1, 0.4, 0.35, 0.8, 0.9, 0.2])
    figure = reports.roc_figure(
        {"network, CV": (truth, score), "one class": (np.ones(3), np.arange(3.0))}
    )
    labels = [t.get_text() for t in figure.axes[0].get_legend().get_texts()]
    assert labels == ["network, CV (AUC 0.889)"]  # the one-class set has no curve
    matrix = {"true_positive": 8, "false_negative": 51, "false_positive": 0, "true_negative": 5}
    figure = reports.confusion_figure({"cross-validation": matrix})
    assert sorted(t.get_text() for t in figure.axes[0].texts) == ["0", "5", "51", "8"]
