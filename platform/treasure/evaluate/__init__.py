"""Evaluation of a baseline / marked model pair: length control, marker inference, control adherence, win rate."""
