"""Presentation: how cells become tables, figures, plots, comparisons and verdicts."""
