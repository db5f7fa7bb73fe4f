"""Data: release and container layouts, synthetic cohort, preprocessing, splits."""
