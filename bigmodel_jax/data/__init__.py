"""Data: sources, tokenizers and grain pipelines."""
