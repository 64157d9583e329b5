"""Treasure Hunt: training-time markers on Ray (annotate, train with marker dropout, tune, evaluate, serve)."""

__version__ = "0.1.0"
