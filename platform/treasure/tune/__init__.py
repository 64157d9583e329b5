"""Hyperparameter search (Ray Tune) over marker dropout and any training field: train → evaluate per trial."""
