"""Benchmarks, one script per table of docs/PERFORMANCE.md; run each as `python -m bench.NAME`."""
