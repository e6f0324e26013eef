"""Benchmarks: one script per area, `python -m benchmarks.bench_<area> [--quick]`."""
