"""Benchmarks: each prints one JSON object, with ratios against a baseline run alongside."""
