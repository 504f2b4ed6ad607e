"""Measuring trained classifiers: metrics, calibration, robustness, a checkpoint evaluated."""

from edgecls.evaluate.metrics import (
    Metrics,
    compute_metrics,
    format_metrics,
    mean_inverse_rank,
    top_k_accuracy,
)

__all__ = ["Metrics", "compute_metrics", "format_metrics", "mean_inverse_rank", "top_k_accuracy"]
