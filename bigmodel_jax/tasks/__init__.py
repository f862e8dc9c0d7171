"""Tasks: each owns its loss, metrics, batch layout and showcase."""
