"""hecktor: experiment-tracked PET/CT pipeline for head-and-neck cancer (HECKTOR 2025 tasks)."""

__version__ = "0.1.0"
