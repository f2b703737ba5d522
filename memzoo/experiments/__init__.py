"""Experiments: sweeps over a config (`memzoo-sweep`), result tables and plots (`memzoo-report`)."""
