"""The one error a stage reports as a user's mistake: a bad input or setting, named in the message."""
from __future__ import annotations


class PipelineError(Exception):
    """An error in the user's input or settings; the message names the file, line or key."""
