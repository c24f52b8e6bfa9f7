"""Figures of the workflow: plotting functions take xarray objects and return a matplotlib
Figure (see common.py for the conventions every figure follows)."""
