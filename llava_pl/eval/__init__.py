"""Evaluations of a trained model."""
