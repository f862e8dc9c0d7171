"""bigmodel_jax: a JAX/Flax research codebase for training, evaluating and serving models."""
