"""Inference: sliding-window prediction, post-processing, and the way back to the CT grid."""
