"""Latency and quality benchmarks (run as ``python -m benchmarks.<name>``)."""
