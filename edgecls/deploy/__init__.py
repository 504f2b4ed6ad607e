"""Using trained models: prediction now, export and benchmarks to come."""
