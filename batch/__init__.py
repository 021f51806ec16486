"""Command-line jobs over many files: ``python -m batch.predict`` (a CSV of calibrated
probabilities and Grad-CAM overlays, locally or on Ray with ``--engine ray``) and
``python -m batch.segment`` (lung masks). They sit above ``model/`` like the screen does."""
