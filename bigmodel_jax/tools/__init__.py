"""Command-line tools that drive run.py: robustness checks and benchmarks."""
