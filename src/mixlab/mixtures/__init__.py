"""Candidate mixture sampling, regression from weights to loss, and selection."""
