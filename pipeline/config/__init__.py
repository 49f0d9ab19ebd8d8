"""Settings: composing the Hydra config, checking it, the part each stage depends on, the grid of models."""
