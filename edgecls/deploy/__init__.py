"""Using trained models: prediction, export in the registered formats, checks and benchmarks."""
