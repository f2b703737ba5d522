"""Data: tokenizers, grain pipelines, synthetic tasks and the shipped corpus."""
