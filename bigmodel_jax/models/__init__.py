"""Models (flax linen), chosen by name."""
