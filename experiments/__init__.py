"""Experiment files: each has get_config(arg) -> ml_collections.ConfigDict."""
