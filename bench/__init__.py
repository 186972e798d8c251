"""Benchmarks: ``python -m bench.NAME``. Results are appended to ``bench/results/``."""
