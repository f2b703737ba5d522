"""Micro-benchmarks: `memzoo-bench` (memzoo/bench/cli.py) runs them and writes the report."""
