"""What a person reads of a run: figures (plots), report.html, comparisons. Nothing is imported
here: `predict` escapes CSV cells with report.escape and should not load matplotlib for it."""
