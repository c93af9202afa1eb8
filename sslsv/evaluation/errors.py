"""The error of the evaluation layer that a user can cause (the CLI prints it as one line, exit status 2)."""
from __future__ import annotations


class EvaluationError(ValueError):
    """Evaluation cannot give a meaningful result: non-finite embeddings or scores, trials of a single class.

    The message names what is non-finite (and the files or trial list concerned) and the likely cause.
    """
