"""Analyses built on the search: budget sweeps, layer sensitivity and their reports."""
