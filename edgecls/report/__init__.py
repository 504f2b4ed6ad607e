"""Figures summarising a training run."""

from edgecls.report.plots import plot_confusion_matrix, plot_history, plot_lr_range_test

__all__ = ["plot_confusion_matrix", "plot_history", "plot_lr_range_test"]
