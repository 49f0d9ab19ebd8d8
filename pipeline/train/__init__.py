"""Stage 2, `python -m pipeline.train`: one model trained with one objective and seed (stage.py),
its steps (steps.py), checkpoints and snapshots (checkpoints.py), dev metrics (evaluate.py) and the
stop rules read from its log (convergence.py)."""
