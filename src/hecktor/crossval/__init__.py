"""Trained models scored on patients they never saw, beside simple baselines: one module per task."""
